"""Listeners behind load balancers that send the PROXY protocol header
(`listen.proxy_protocol`, docs/semantics.md §4).

A connection from a listed balancer is read for its header first (v1 or v2,
within `header_timeout`); the client it names is then the client everywhere:
source groups, the stranger check (which for these listeners happens here,
after the header, instead of at accept), decision and close records, metrics.
Exactly the header's bytes are consumed, so the listener's handler reads the
client's own bytes as if the balancer were not there. A connection from
elsewhere is refused at accept when the header is `required`
(`balancer_unknown`), and served as its own client otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from portcullis.basics.errors import ProxyHeaderError
from portcullis.basics.hostport import format_hostport
from portcullis.basics.ip import IPAddress, IPNetwork
from portcullis.basics.vocabulary import Mode, Reason
from portcullis.config import Policy
from portcullis.observe.events import new_connection_id
from portcullis.proxy import transparent
from portcullis.proxy.admission import stranger
from portcullis.proxy.attempt import Attempt
from portcullis.proxy.balanced import BALANCED, Balanced
from portcullis.proxy.lingering import close_refused
from portcullis.proxy.reading import ClientGone, wait_ready
from portcullis.proxy.responses import error_response
from portcullis.proxy.state import FirewallState
from portcullis.wire.proxy_protocol import MAX_HEADER, ProxyHeader, parse_proxy_header

Handler = Callable[[FirewallState, socket.socket, tuple[str, int]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Balancers:
    """The balancers a listener takes the PROXY protocol header from."""

    networks: tuple[IPNetwork, ...]
    required: bool

    def trusts(self, peer: IPAddress) -> bool:
        return any(peer in network for network in self.networks)


def balancers_for(policy: Policy, mode: Mode) -> Balancers | None:
    settings = getattr(policy.listen.proxy_protocol, mode.value, None)
    if settings is None:
        return None
    return Balancers(tuple(settings.from_), settings.required)


def behind_balancer(handler: Handler, mode: Mode) -> Handler:
    """`handler` for a connection from a trusted balancer: the header first."""

    async def serve(state: FirewallState, conn: socket.socket, peer: tuple[str, int]) -> None:
        balancer = format_hostport(peer[0], peer[1])
        try:
            header = await read_proxy_header(conn, state.gate.limits.header_timeout)
        except ClientGone:
            conn.close()
            return
        except (TimeoutError, ProxyHeaderError) as exc:
            detail = (exc.message if isinstance(exc, ProxyHeaderError)
                      else "no PROXY protocol header in time")
            attempt = Attempt(mode, peer[0], peer[1], new_connection_id(), balancer=balancer)
            refuse_early(state, conn, attempt, Reason.PROXY_HEADER, 400, detail)
            state.log.log_error("PROXY protocol header refused", balancer=balancer, error=detail)
            return
        # LOCAL / UNKNOWN: the balancer's own connection (a health check): it is the client.
        client = (str(header.source[0]), header.source[1]) if header.source else peer
        BALANCED.set(Balanced(balancer, header.destination))
        if stranger(state.gate, client[0]):
            attempt = Attempt(mode, client[0], client[1], new_connection_id())
            refuse_early(state, conn, attempt, Reason.SOURCE_UNKNOWN, 403,
                         "this client is in no source group")
            return
        await handler(state, conn, client)

    return serve


def refuse_early(state: FirewallState, conn: socket.socket, attempt: Attempt, reason: Reason,
                 status: int, detail: str) -> None:
    """Record and answer a refusal before the listener's handler ran (at accept,
    or after a PROXY protocol header); close."""
    if attempt.mode is Mode.TRANSPARENT:
        transparent.refuse_at_accept(state, conn, attempt, reason)
    elif attempt.mode is Mode.EXPLICIT_TLS:
        state.refuse_and_record(attempt, reason)  # no TLS yet: nothing to answer in
    else:
        state.refuse_and_record(attempt, reason)
        with contextlib.suppress(OSError):
            conn.send(error_response(status, attempt, detail))
    close_refused(conn)


async def read_proxy_header(conn: socket.socket, timeout: float) -> ProxyHeader:
    """The header at the start of `conn`, consuming exactly its bytes.

    Bytes are peeked, and taken only once they are known to be the header's,
    so the client's first bytes stay in the socket for the handler.
    TimeoutError, ClientGone or ProxyHeaderError.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    taken = bytearray()
    while True:
        try:
            peeked = conn.recv(MAX_HEADER - len(taken), socket.MSG_PEEK)
        except BlockingIOError:
            await wait_ready(loop, conn, deadline)
            continue
        except OSError as exc:
            raise ClientGone from exc
        if not peeked:
            raise ClientGone
        header = parse_proxy_header(taken + peeked)
        if header is not None:
            conn.recv(header.length - len(taken))
            return header
        # Incomplete: everything so far belongs to the header; take it and wait.
        taken += conn.recv(len(peeked))
