"""Plain HTTP through the proxy: absolute-form requests (`GET http://host/...`).

h11 parses the client's messages and re-serializes them towards the upstream,
and parses the upstream's answers and re-serializes them to the client. Bytes
are never forwarded as received, so the upstream sees one unambiguous framing
(Content-Length or chunked, decided by h11) whatever the client sent: a message
the proxy and the upstream could split differently cannot get through.
The first head was already checked by the strict parser; every head, first or
later on a kept-alive connection, is checked again by `check_request` (Host
agreement, Content-Length / Transfer-Encoding conflicts) before it is decided.
Transparent mode reuses this path for redirected port-80 traffic (origin-form
requests decided on their Host) through `authority_of` and `choose`.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import h11

from portcullis.basics.errors import HttpError, Refusal
from portcullis.basics.ip import IPAddress
from portcullis.basics.vocabulary import CloseReason, Reason
from portcullis.observe.events import new_connection_id
from portcullis.proxy.admission import admit, decide
from portcullis.proxy.attempt import Attempt
from portcullis.proxy.responses import error_response
from portcullis.proxy.state import FirewallState
from portcullis.wire.authority import Authority
from portcullis.wire.http1 import RequestHead, check_request, parse_absolute_uri

# The name and port a request is decided on (raises HttpError).
AuthorityOf = Callable[[RequestHead], Authority]

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


class _Closed(Exception):
    """One side closed or failed: stop serving this connection."""

    def __init__(self, reason: CloseReason = CloseReason.CLOSED) -> None:
        super().__init__(reason)
        self.reason = reason  # the close record's close_reason


def _forwardable(headers: Any) -> list[tuple[bytes, bytes]]:
    listed = {
        token.strip().lower()
        for name, value in headers
        if name == b"connection"
        for token in value.split(b",")
    }
    listed -= _END_TO_END
    return [(n, v) for n, v in headers if n not in _HOP_BY_HOP and n not in listed]


def _as_head(event: h11.Request) -> RequestHead:
    return RequestHead(
        method=event.method.decode("ascii"),
        target=event.target.decode("ascii"),
        version="HTTP/" + event.http_version.decode("ascii"),
        headers=tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers),
        head_length=0,
    )


class _Upstream:
    def __init__(self, key: tuple[str, int], sock: socket.socket, attempt: Attempt) -> None:
        self.key = key
        self.sock = sock
        self.conn = h11.Connection(h11.CLIENT)
        # Where it went, for the records of later requests that reuse it.
        self.resolved = attempt.resolved
        self.dialed = attempt.dialed


async def _next_event(
    conn: h11.Connection, sock: socket.socket, timeout: float
) -> Any:
    loop = asyncio.get_running_loop()
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        try:
            async with asyncio.timeout(timeout):  # not wait_for: a Task per call on 3.11
                data = await loop.sock_recv(sock, _READ)
        except (OSError, TimeoutError) as exc:
            raise _Closed from exc
        conn.receive_data(data)


async def _send(sock: socket.socket, data: bytes | None) -> None:
    if data:
        try:
            await asyncio.get_running_loop().sock_sendall(sock, data)
        except OSError as exc:
            raise _Closed from exc


async def serve(
    state: FirewallState,
    conn: socket.socket,
    attempt: Attempt,
    raw: bytes,
    *,
    authority_of: AuthorityOf = check_request,
    original: IPAddress | None = None,
) -> None:
    """Serve absolute-form requests on `conn` until either side closes.

    `original` is a redirected connection's original destination (transparent
    port 80), which admission uses to order (and in `strict` mode check) the
    addresses it dials.
    """
    limits = state.policy.limits
    client = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.header_bytes)
    client.receive_data(raw)
    upstream: _Upstream | None = None
    close_reason = CloseReason.CLOSED
    sent_up = sent_down = 0
    try:
        while True:
            try:
                event = await _next_event(client, conn, limits.header_timeout)
            except h11.RemoteProtocolError as exc:
                state.refuse_and_record(attempt, Reason.BAD_REQUEST)
                await _send(conn, error_response(400, attempt, str(exc)))
                return
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed or a client that went away
            try:
                authority = authority_of(_as_head(event))
            except HttpError as exc:
                state.refuse_and_record(attempt, exc.reason)
                await _send(conn, error_response(exc.status, attempt, exc.message))
                return
            upstream = await _upstream_for(state, conn, attempt, authority, upstream, original)
            if upstream is None:
                return
            state.record(attempt)
            up, down = await _exchange(state, client, conn, upstream, event)
            sent_up += up
            sent_down += down
            if client.our_state is not h11.DONE or client.their_state is not h11.DONE:
                return
            client.start_next_cycle()
            if upstream.conn.our_state is h11.DONE and upstream.conn.their_state is h11.DONE:
                upstream.conn.start_next_cycle()
            else:
                upstream.sock.close()
                upstream = None
            # The next request on this connection is a new decision with its own record.
            state.record_close(attempt, sent_up, sent_down, CloseReason.DONE)
            sent_up = sent_down = 0
            attempt = attempt.next_request(new_connection_id())
    except _Closed as closed:
        close_reason = closed.reason
    except asyncio.CancelledError:
        close_reason = CloseReason.CANCELLED
        if attempt.host is not None and not attempt.logged:
            state.refuse_and_record(attempt, Reason.DRAINING)
        raise
    finally:
        if upstream is not None:
            upstream.sock.close()
        if attempt.logged:
            state.record_close(attempt, sent_up, sent_down, close_reason)


async def _upstream_for(
    state: FirewallState,
    conn: socket.socket,
    attempt: Attempt,
    authority: Authority,
    upstream: _Upstream | None,
    original: IPAddress | None,
) -> _Upstream | None:
    """The upstream for this request: the kept-alive one when it serves the same
    name and port (after a fresh decision), else a newly admitted one. None when
    the request was refused (answered and recorded)."""
    gate = state.gate
    key = (authority.host, authority.port)
    if upstream is not None and upstream.key == key:
        if decide(gate, attempt, authority):
            attempt.resolved, attempt.dialed = upstream.resolved, upstream.dialed
            return upstream
        refusal = Refusal("", reason=attempt.reason)
    else:
        if upstream is not None:
            upstream.sock.close()
            upstream = None
        try:
            sock = await admit(gate, state.metrics, attempt, authority, original=original)
            return _Upstream(key, sock, attempt)
        except Refusal as exc:
            refusal = exc
    if upstream is not None:
        upstream.sock.close()
    state.record(attempt)
    await _send(conn, error_response(refusal.status, attempt, refusal.message))
    return None


async def _exchange(
    state: FirewallState,
    client: h11.Connection,
    conn: socket.socket,
    upstream: _Upstream,
    request: h11.Request,
) -> tuple[int, int]:
    """Forward one request with its body, then its response; return body byte counts."""
    timeout = state.policy.limits.idle_timeout
    target = request.target.decode("ascii")
    # Origin-form only gets here from transparent mode, whose `authority_of` took the Host.
    path = target if target.startswith("/") else parse_absolute_uri(target)[2]
    outgoing = h11.Request(
        method=request.method, target=path.encode("ascii"), headers=_forwardable(request.headers),
        http_version=request.http_version,
    )
    up = down = 0
    await _send(upstream.sock, upstream.conn.send(outgoing))
    while True:
        try:
            event = await _next_event(client, conn, timeout)
        except h11.RemoteProtocolError as exc:
            # The body broke its own framing after the head went upstream: the
            # upstream holds half a request, so both connections end here.
            raise _Closed(CloseReason.BAD_REQUEST) from exc
        if isinstance(event, h11.Data):
            up += len(event.data)
        await _send(upstream.sock, upstream.conn.send(event))
        if isinstance(event, h11.EndOfMessage):
            break
    while True:
        try:
            event = await _next_event(upstream.conn, upstream.sock, timeout)
        except h11.RemoteProtocolError as exc:
            raise _Closed from exc
        if isinstance(event, h11.ConnectionClosed):
            raise _Closed
        if isinstance(event, h11.InformationalResponse | h11.Response):
            event = type(event)(
                status_code=event.status_code, headers=_forwardable(event.headers),
                reason=event.reason, http_version=event.http_version,
            )
        elif isinstance(event, h11.Data):
            down += len(event.data)
        await _send(conn, client.send(event))
        if isinstance(event, h11.EndOfMessage):
            break
    return up, down
