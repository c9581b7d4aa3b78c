"""The explicit listener: clients that set HTTPS_PROXY / HTTP_PROXY.

`CONNECT host:port` goes through admission (decide, resolve, check, dial), is
answered `200`, and then the client's first bytes are peeked: they must be a
ClientHello whose SNI is the CONNECT host, on every port, unless the port is
outside `tls_ports` and the deciding rule says `raw: true` (docs/decisions.md,
"Every tunnel is checked"). Absolute-form requests (`GET http://host/...`) go
to the plain-HTTP path.
"""

from __future__ import annotations

import socket
from collections.abc import Coroutine
from typing import Any

from portcullis.basics.errors import ClientHelloError, HttpError, Refusal
from portcullis.basics.vocabulary import CloseReason, Mode, Reason
from portcullis.proxy import plain
from portcullis.proxy.admission import admit, authenticate, check_hello, refuse
from portcullis.proxy.attempt import Attempt
from portcullis.proxy.inspecting import inspects, serve_inspected
from portcullis.proxy.reading import (
    ClientGone,
    read_client_hello,
    read_head,
    send_all,
    send_quietly,
)
from portcullis.proxy.responses import error_response
from portcullis.proxy.state import FirewallState, serve_connection
from portcullis.wire.authority import Authority
from portcullis.wire.http1 import RequestHead, check_request

ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


def handle_explicit(state: FirewallState, conn: socket.socket, peer: tuple[str, int],
                    *, mode: Mode = Mode.EXPLICIT, certified: str | None = None
                    ) -> Coroutine[Any, Any, None]:
    """Serve one client connection of the explicit listener; always closes `conn`.
    (`certified`: the client certificate's identity, on the TLS listener.)"""
    # Not a coroutine of its own: one frame fewer to resume at every wait.
    return serve_connection(state, conn, peer, mode, _serve, certified=certified)


async def _serve(state: FirewallState, conn: socket.socket, attempt: Attempt) -> None:
    limits = state.gate.limits
    buffer = bytearray()
    try:
        head, rest = await read_head(conn, buffer, limits.header_timeout, limits.header_bytes)
        # Checked on the strict parser's head, not only on h11's view of it
        # later: h11 merges repeated equal Content-Length fields, and a CONNECT
        # never reaches h11 (a second Host or a body on it is refused here).
        authority = check_request(head)
    except ClientGone:
        return
    except TimeoutError:
        state.refuse_and_record(attempt, Reason.HEADER_TIMEOUT)
        await send_quietly(conn, error_response(408, attempt, "no complete request head in time"))
        return
    except HttpError as exc:
        state.refuse_and_record(attempt, exc.reason)
        await send_quietly(conn, error_response(exc.status, attempt, exc.message))
        return
    if head.method == "CONNECT":
        await _connect(state, conn, attempt, head, authority, rest)
    else:
        attempt.mode = Mode.HTTP
        await plain.serve(state, conn, attempt, bytes(buffer))


def _raw_allowed(attempt: Attempt) -> bool:
    """Whether the tunnel may carry bytes that are not TLS: only on a port outside
    `tls_ports`, and only when an allow rule with `raw: true` decided it."""
    rule = attempt.matched
    return rule is not None and rule.raw and rule.allows


async def _connect(state: FirewallState, conn: socket.socket, attempt: Attempt,
                   head: RequestHead, authority: Authority, rest: bytes) -> None:
    gate = state.gate
    try:
        await authenticate(gate, state.metrics, attempt, head, authority)
        upstream = await admit(gate, state.metrics, attempt, authority)
    except Refusal as refusal:
        state.record(attempt)
        await send_quietly(conn, error_response(refusal.status, attempt, refusal.message,
                                                realm=gate.policy.auth.realm))
        return
    try:
        await send_all(conn, ESTABLISHED)
        peeked, alpn = rest, tuple[str, ...]()
        if authority.port in gate.tls_ports or not _raw_allowed(attempt):
            try:
                # Right after the 200: a read now would almost always fail
                # (one exception per connection), the client has yet to see it.
                hello, peeked = await read_client_hello(
                    conn, rest, gate.limits.client_hello_timeout, answered=True
                )
                go_on = check_hello(gate, attempt, hello.sni, hello.has_ech)
                alpn = hello.alpn
            except ClientHelloError as exc:
                go_on = refuse(gate, attempt, exc.reason)
            except TimeoutError:
                go_on = refuse(gate, attempt, Reason.HEADER_TIMEOUT)
            if not go_on:
                state.record(attempt)
                upstream.close()
                return
    except (ClientGone, OSError):
        # The decision stands (the tunnel was allowed); the close record says
        # the client left before its first bytes.
        state.record(attempt)
        state.record_close(attempt, 0, 0, CloseReason.CLIENT_GONE)
        upstream.close()
        return
    except BaseException:
        upstream.close()
        raise
    inspection = inspects(attempt)
    if inspection is not None:
        await serve_inspected(state, conn, upstream, peeked, attempt, alpn, inspection)
        return
    await state.relay_tunnel(attempt, conn, upstream, peeked, gate.limits.idle_timeout)
