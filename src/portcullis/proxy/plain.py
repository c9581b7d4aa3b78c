"""Plain HTTP through the proxy: absolute-form requests (`GET http://host/...`),
and redirected port-80 traffic in transparent mode (origin-form, decided on Host).

Every request head on a connection, the first and each later one on a
kept-alive connection, is read by the strict parser (`wire/http1.py`) within
one `header_timeout` for the whole head, then checked (`authority_of`), then
decided and admitted on its own, with its own decision record, before h11
takes the head and its body (proxy/forwarding.py). So a later head can be
neither sloppier nor slower than the first, and a CONNECT pipelined behind a
plain request is refused before anything is dialled.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import h11

from portcullis.basics.errors import BadRequest, HttpError, Refusal
from portcullis.basics.ip import IPAddress
from portcullis.basics.vocabulary import CloseReason, Reason
from portcullis.observe.events import new_connection_id
from portcullis.proxy.admission import admit, authenticate, decide, refused
from portcullis.proxy.attempt import Attempt
from portcullis.proxy.forwarding import Closed, Moved, Upstream, client_request, exchange
from portcullis.proxy.reading import ClientGone, read_head, send_quietly
from portcullis.proxy.responses import error_response
from portcullis.proxy.state import FirewallState
from portcullis.wire.authority import Authority
from portcullis.wire.http1 import RequestHead, check_request

# The name and port a request is decided on (raises HttpError).
AuthorityOf = Callable[[RequestHead], Authority]


def proxy_authority(head: RequestHead) -> Authority:
    """An absolute-form request's authority; a CONNECT has no place on this path."""
    if head.method == "CONNECT":
        # Only the first head of a connection may open a tunnel: one behind a
        # plain request would be decided here and then not be a request at all.
        raise BadRequest("CONNECT after a plain-HTTP request on the same connection;"
                         " open a new connection for the tunnel")
    return check_request(head)


async def serve(
    state: FirewallState,
    conn: socket.socket,
    attempt: Attempt,
    raw: bytes,
    *,
    authority_of: AuthorityOf = proxy_authority,
    original: IPAddress | None = None,
    first_head_timeout: float | None = None,
) -> None:
    """Serve requests on `conn` until either side closes.

    `raw` holds the bytes already received; `original` is a redirected
    connection's original destination (transparent port 80), which admission
    uses to order (and in `strict` mode check) the addresses it dials.
    """
    limits = state.gate.limits
    pending = bytearray(raw)
    head_timeout = first_head_timeout or limits.header_timeout
    upstream: Upstream | None = None
    close_reason = CloseReason.CLOSED
    moved = Moved()
    try:
        while True:
            found = await _next_head(state, conn, attempt, pending, head_timeout, authority_of)
            if found is None:
                return
            authority, head = found
            head_timeout = limits.header_timeout
            try:
                client, request = client_request(bytes(pending), limits.header_bytes)
            except h11.RemoteProtocolError as exc:
                state.refuse_and_record(attempt, Reason.BAD_REQUEST)
                await send_quietly(conn, error_response(400, attempt, str(exc)))
                return
            pending.clear()
            upstream = await _upstream_for(state, conn, attempt, head, authority, upstream,
                                           original)
            if upstream is None:
                return
            state.record(attempt)
            await exchange(limits.idle_timeout, client, conn, upstream, request, authority,
                           moved)
            if client.our_state is not h11.DONE or client.their_state is not h11.DONE:
                return
            pending += client.trailing_data[0]  # a pipelined next request, if any
            if upstream.conn.our_state is h11.DONE and upstream.conn.their_state is h11.DONE:
                upstream.conn.start_next_cycle()
            else:
                upstream.sock.close()
                upstream = None
            # The next request on this connection is a new decision with its own record.
            state.record_close(attempt, moved.up, moved.down, CloseReason.DONE)
            moved = Moved()
            attempt = attempt.next_request(new_connection_id())
    except Closed as closed:
        close_reason = closed.reason
        if closed.answer is not None:
            status, detail = closed.answer
            await send_quietly(conn, error_response(status, attempt, detail))
    except asyncio.CancelledError:
        close_reason = CloseReason.CANCELLED
        state.abandon(attempt)
        raise
    finally:
        if upstream is not None:
            upstream.sock.close()
        if attempt.logged:
            state.record_close(attempt, moved.up, moved.down, close_reason)


async def _next_head(
    state: FirewallState, conn: socket.socket, attempt: Attempt, pending: bytearray,
    timeout: float, authority_of: AuthorityOf,
) -> tuple[Authority, RequestHead] | None:
    """Read and check the next request head into `pending`; None when the
    connection ends here (the client left, went quiet, or was refused)."""
    try:
        head, _ = await read_head(conn, pending, timeout, state.gate.limits.header_bytes)
        return authority_of(head), head
    except ClientGone:
        return None
    except TimeoutError:
        if not pending:
            return None  # a kept-alive connection nobody used again: just close it
        state.refuse_and_record(attempt, Reason.HEADER_TIMEOUT)
        await send_quietly(conn, error_response(408, attempt, "no complete request head in time"))
        return None
    except HttpError as exc:
        state.refuse_and_record(attempt, exc.reason)
        await send_quietly(conn, error_response(exc.status, attempt, exc.message))
        return None


async def _upstream_for(
    state: FirewallState,
    conn: socket.socket,
    attempt: Attempt,
    head: RequestHead,
    authority: Authority,
    upstream: Upstream | None,
    original: IPAddress | None,
) -> Upstream | None:
    """The upstream for this request: the kept-alive one when it serves the same
    name and port (after a fresh decision), else a newly admitted one. None when
    the request was refused (answered and recorded)."""
    gate = state.gate
    key = (authority.host, authority.port)
    try:
        # Each request carries its own Proxy-Authorization (never forwarded).
        await authenticate(gate, state.metrics, attempt, head, authority)
        if upstream is not None and upstream.key == key:
            if not decide(gate, attempt, authority):
                raise refused(attempt)
            attempt.resolved, attempt.dialed = upstream.resolved, upstream.dialed
            attempt.parent = upstream.parent
            return upstream
        if upstream is not None:
            upstream.sock.close()
            upstream = None
        sock = await admit(gate, state.metrics, attempt, authority, original=original)
        return Upstream(key, sock, attempt)
    except Refusal as refusal:
        if upstream is not None:
            upstream.sock.close()
        state.record(attempt)
        await send_quietly(conn, error_response(refusal.status, attempt, refusal.message,
                                        realm=gate.policy.auth.realm))
        return None
