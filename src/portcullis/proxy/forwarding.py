"""One HTTP exchange forwarded through h11 in both directions (plain HTTP).

h11 parses each message and the proxy writes a fresh one to the other side,
so the receiver sees one unambiguous framing (Content-Length or chunked,
decided by h11) whatever the sender wrote. What is never forwarded: hop-by-hop
fields, the proxy's own fields, fields a `Connection:` header lists, and
trailer fields that would frame, route or authenticate the message.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import h11

from portcullis.basics.hostport import format_authority
from portcullis.basics.vocabulary import CloseReason
from portcullis.proxy.attempt import Attempt
from portcullis.wire.authority import Authority
from portcullis.wire.http1 import parse_absolute_uri

_READ = 65536
# Hop-by-hop fields (RFC 9110 §7.6.1) and the proxy's own: never forwarded.
# Content-Length and Transfer-Encoding stay: h11 frames the message from them.
_HOP_BY_HOP = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"proxy-authorization",
     b"proxy-authenticate", b"te", b"trailer", b"upgrade"}
)
# Kept even when `Connection:` lists them: without its framing field h11 refuses
# to send the body it already parsed (an HTTP/1.1 request also needs Host), and
# the exception would end the connection as a proxy failure.
_END_TO_END = frozenset({b"content-length", b"transfer-encoding", b"host"})
# Trailer fields that RFC 9110 §6.5.1 forbids: framing, routing, authentication,
# request modifiers and what describes the content. A receiver that merged one
# into the head would read another message than the one the proxy decided on.
_NOT_IN_TRAILERS = _HOP_BY_HOP | _END_TO_END | frozenset(
    {b"authorization", b"www-authenticate", b"cookie", b"set-cookie", b"expect",
     b"max-forwards", b"range", b"if-match", b"if-none-match", b"if-modified-since",
     b"if-unmodified-since", b"if-range", b"cache-control", b"pragma", b"age",
     b"expires", b"date", b"location", b"retry-after", b"vary", b"warning",
     b"content-encoding", b"content-type", b"content-range"}
)


class Closed(Exception):
    """One side closed or failed: stop serving this connection.

    `answer` is the status and detail the client is still owed when nothing of
    a final response has reached it yet (`exchange`); None when it has, or
    when the client itself is gone.
    """

    def __init__(self, reason: CloseReason = CloseReason.CLOSED,
                 answer: tuple[int, str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason  # the close record's close_reason
        self.answer = answer


def forwardable(headers: Any, host: str | None = None) -> list[tuple[bytes, bytes]]:
    """The fields to forward; with `host`, Host is exactly that (the name decided on)."""
    listed = {
        token.strip().lower()
        for name, value in headers
        if name == b"connection"
        for token in value.split(b",")
    }
    listed -= _END_TO_END
    out = [(n, v) for n, v in headers if n not in _HOP_BY_HOP and n not in listed]
    if host is None:
        return out
    return [(b"host", host.encode("ascii")), *((n, v) for n, v in out if n != b"host")]


def allowed_trailers(event: h11.EndOfMessage) -> h11.EndOfMessage:
    """The end of a message with only the trailer fields that may be forwarded."""
    kept = [(n, v) for n, v in event.headers if n not in _NOT_IN_TRAILERS]
    return event if len(kept) == len(event.headers) else h11.EndOfMessage(headers=kept)


def outgoing_request(request: h11.Request, authority: Authority) -> h11.Request:
    """The request to send upstream: HTTP/1.1 (all h11 sends; an HTTP/1.0 client's
    request gets the Host it may lack), origin-form, Host exactly the name decided on."""
    target = request.target.decode("ascii")
    # Origin-form only gets here from transparent mode, whose `authority_of` took the Host.
    path = target if target.startswith("/") else parse_absolute_uri(target)[2]
    host = format_authority(authority.host, authority.port, 80)
    return h11.Request(
        method=request.method, target=path.encode("ascii"),
        headers=forwardable(request.headers, host),
    )


def client_request(pending: bytes, max_head: int) -> tuple[h11.Connection, h11.Request]:
    """A fresh h11 connection holding `pending` (a whole head the strict parser
    accepted, and what followed it) and the request it reads from it.

    One connection per request: what follows a request's body is taken back
    from `trailing_data` and goes through the strict parser before h11 sees it.
    Raises h11.RemoteProtocolError when h11 refuses what the parser accepted.
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
    conn.receive_data(pending)
    request = conn.next_event()
    if not isinstance(request, h11.Request):
        raise h11.RemoteProtocolError(f"expected a request head, h11 read {request!r}")
    return conn, request


class Moved:
    """Body bytes one request's exchange forwarded each way, counted as they
    go: the close record of an exchange that failed says what went too."""

    __slots__ = ("down", "up")

    def __init__(self) -> None:
        self.up = self.down = 0


class Upstream:
    """A kept-alive upstream connection and where it went."""

    def __init__(self, key: tuple[str, int], sock: socket.socket, attempt: Attempt) -> None:
        self.key = key
        self.sock = sock
        self.conn = h11.Connection(h11.CLIENT)
        # Where it went, for the records of later requests that reuse it.
        self.resolved = attempt.resolved
        self.dialed = attempt.dialed
        self.parent = attempt.parent
        self.served = 0  # exchanges completed on it


async def next_event(conn: h11.Connection, sock: socket.socket, timeout: float) -> Any:
    """The next h11 event, reading as needed with `timeout` per read (an idle limit)."""
    loop = asyncio.get_running_loop()
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        try:
            async with asyncio.timeout(timeout):  # not wait_for: a Task per call on 3.11
                data = await loop.sock_recv(sock, _READ)
        except TimeoutError as exc:
            raise Closed(CloseReason.IDLE_TIMEOUT) from exc
        except OSError as exc:
            raise Closed from exc
        conn.receive_data(data)


async def send(sock: socket.socket, data: bytes | None, timeout: float | None = None) -> None:
    """Send all of `data`; Closed when the peer fails, or when it has not taken
    it in `timeout` s (a peer that stops reading is idle too)."""
    if data:
        try:
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().sock_sendall(sock, data)
        except TimeoutError as exc:
            raise Closed(CloseReason.IDLE_TIMEOUT) from exc
        except OSError as exc:
            raise Closed from exc


async def exchange(
    idle_timeout: float,
    client: h11.Connection,
    conn: socket.socket,
    upstream: Upstream,
    request: h11.Request,
    authority: Authority,
    moved: Moved,
) -> None:
    """Forward one request with its body, then its response, counting the body
    bytes in `moved`.

    Raises Closed, with the answer the client is owed while no final response
    head has gone to it: 400 for a body that broke its framing or ended early,
    408 for one that stalled, 502 for an upstream that closed, failed or
    answered something that is not HTTP/1.1, 504 for one that did not answer.
    """
    await _send_upstream(upstream, upstream.conn.send(outgoing_request(request, authority)),
                         idle_timeout)
    await _request_body(idle_timeout, client, conn, upstream, moved)
    await _response(idle_timeout, client, conn, upstream, moved)
    upstream.served += 1


def request_body_answer(error: h11.RemoteProtocolError | None, idle_timeout: float
                        ) -> tuple[int, str]:
    """What a client is owed when its request body broke its framing or ended
    early (`error`), or stalled for `idle_timeout` (None)."""
    if error is None:
        return 408, f"request body: nothing came for {idle_timeout:g} s"
    return 400, f"request body: {error}"


def not_http_answer(conn: h11.Connection, error: h11.RemoteProtocolError
                    ) -> tuple[int, str] | None:
    """The 502 for an upstream answer h11 refused; None when h11's error only
    says the upstream closed where a response was due (nothing was received)."""
    received, ended = conn.trailing_data
    if ended and not received:
        return None
    return 502, f"the upstream's answer is not HTTP/1.1: {error}"


def upstream_failure_answer(*, timed_out: bool, sending: bool, kept_alive: bool,
                            cause: object, idle_timeout: float) -> tuple[int, str] | None:
    """What a client is owed when its upstream ended before answering it: 504
    when the upstream stalled, 502 naming `cause` (None: a plain close) when it
    closed or failed. None on a connection kept alive from an earlier request:
    a close there is the race every HTTP client retries on (RFC 9112 §9.3.1),
    so the client's connection is closed as quietly. `sending`: while the
    request went out."""
    if timed_out:
        return 504, (f"the upstream took no request bytes for {idle_timeout:g} s" if sending
                     else f"no answer from the upstream in {idle_timeout:g} s")
    if kept_alive:
        return None
    if sending:
        return 502, f"the upstream failed while the request was sent: {cause}"
    if cause is None:
        return 502, "the upstream closed the connection without answering"
    return 502, f"the upstream failed before answering: {cause}"


async def _send_upstream(upstream: Upstream, data: bytes | None, idle_timeout: float) -> None:
    try:
        await send(upstream.sock, data, idle_timeout)
    except Closed as closed:
        closed.answer = upstream_failure_answer(
            timed_out=closed.reason is CloseReason.IDLE_TIMEOUT, sending=True,
            kept_alive=upstream.served > 0, cause=closed.__cause__, idle_timeout=idle_timeout)
        raise


async def _request_body(idle_timeout: float, client: h11.Connection, conn: socket.socket,
                        upstream: Upstream, moved: Moved) -> None:
    while True:
        try:
            event = await next_event(client, conn, idle_timeout)
        except h11.RemoteProtocolError as exc:
            # The body broke its own framing after the head went upstream: the
            # upstream holds half a request, so both connections end here.
            raise Closed(CloseReason.BAD_REQUEST, request_body_answer(exc, idle_timeout)) from exc
        except Closed as closed:
            if closed.reason is CloseReason.IDLE_TIMEOUT:
                closed.answer = request_body_answer(None, idle_timeout)
            raise
        if isinstance(event, h11.EndOfMessage):
            event = allowed_trailers(event)
        await _send_upstream(upstream, upstream.conn.send(event), idle_timeout)
        if isinstance(event, h11.Data):
            moved.up += len(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return


async def _response(idle_timeout: float, client: h11.Connection, conn: socket.socket,
                    upstream: Upstream, moved: Moved) -> None:
    answered = False  # a final response head went to the client
    while True:
        try:
            event = await _upstream_event(upstream, idle_timeout)
        except Closed as closed:
            if answered:
                closed.answer = None
            elif closed.answer is None:  # not a broken answer: a close, a failure, a stall
                closed.answer = upstream_failure_answer(
                    timed_out=closed.reason is CloseReason.IDLE_TIMEOUT, sending=False,
                    kept_alive=upstream.served > 0, cause=closed.__cause__,
                    idle_timeout=idle_timeout)
            raise
        if isinstance(event, h11.InformationalResponse | h11.Response):
            answered = answered or isinstance(event, h11.Response)
            event = type(event)(
                status_code=event.status_code, headers=forwardable(event.headers),
                reason=event.reason, http_version=event.http_version,
            )
        elif isinstance(event, h11.EndOfMessage):
            event = allowed_trailers(event)
        await send(conn, client.send(event), idle_timeout)
        if isinstance(event, h11.Data):
            moved.down += len(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return


async def _upstream_event(upstream: Upstream, idle_timeout: float) -> Any:
    """The upstream's next event. Closed when it closed, failed or stalled, or
    broke HTTP/1.1 (then with the 502 that says so)."""
    try:
        event = await next_event(upstream.conn, upstream.sock, idle_timeout)
    except h11.RemoteProtocolError as exc:
        answer = not_http_answer(upstream.conn, exc)
        if answer is None:
            raise Closed() from None  # a close, not a broken answer
        raise Closed(answer=answer) from exc
    if isinstance(event, h11.ConnectionClosed):
        raise Closed()
    return event

