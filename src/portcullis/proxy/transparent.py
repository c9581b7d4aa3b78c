"""The transparent listener: connections redirected by nftables/iptables (DESIGN §1).

The client configured nothing and believes it talks to the registry. The
original destination comes from SO_ORIGINAL_DST, the name from the ClientHello's
SNI (or, for plain HTTP, each request's Host). Portcullis resolves the name
itself and dials an address that passed the checks. The original destination
IP is only evidence (`strict` requires it among the resolved addresses), never
a target: dialling it would let a client pair an allowed SNI with any address,
which is exactly SNI spoofing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket

from portcullis.config import IPAddress
from portcullis.net.addresses import unmap
from portcullis.net.sockets import (
    Endpoint,
    NoOriginalDestination,
    format_endpoint,
    local_endpoint,
    original_dst,
)
from portcullis.policy.decisions import Decision, Reason
from portcullis.policy.engine import Verdict
from portcullis.proxy import plain
from portcullis.proxy.explicit import ClientGone, read_client_hello, sni_problem
from portcullis.proxy.relay import relay
from portcullis.proxy.state import Attempt, FirewallState, client_address, serve_connection
from portcullis.proxy.upstream import Refused, dial, resolve_and_check
from portcullis.wire.authority import Authority, AuthorityError, parse_authority
from portcullis.wire.http1 import BadRequest, RequestHead, check_request
from portcullis.wire.tls import ClientHelloError, peek_is_tls

# A fatal TLS alert, access_denied(49): the client reports "tls: access denied"
# instead of an unexplained EOF, which points its operator at a firewall.
ACCESS_DENIED_ALERT = bytes.fromhex("15030300020231")
_READ = 65536

# Local ends of this process's upstream sockets. A connection arriving *from*
# one of them is our own traffic redirected back to us (a same-host set-up that
# does not exempt Portcullis): refusing it breaks the loop at the first turn.
_our_ends: set[Endpoint] = set()


async def handle_transparent(
    state: FirewallState, conn: socket.socket, peer: tuple[str, int]
) -> None:
    """Serve one redirected connection; always closes `conn`."""
    await serve_connection(state, conn, peer, "transparent", _serve)


async def _serve(state: FirewallState, conn: socket.socket, attempt: Attempt) -> None:
    here = local_endpoint(conn)
    try:
        original: Endpoint | None = original_dst(conn)
    except NoOriginalDestination:
        original = None
    if original is None or original == here:
        # Not redirected: someone dialled the listener itself. There is no
        # destination to decide on, and the listener is not an open relay.
        attempt.original_dst = format_endpoint(original or here)
        attempt.port = here[1]
        attempt.refuse(Reason.ADDRESS_FORBIDDEN)
        attempt.record()
        return
    attempt.original_dst = format_endpoint(original)
    attempt.port = original[1]
    try:
        first = b"" if original[1] in state.policy.tls_ports else await _first_bytes(state, conn)
    except ClientGone:
        return
    except TimeoutError:
        attempt.refuse(Reason.HEADER_TIMEOUT)
        attempt.record()
        return
    if original[1] in state.policy.tls_ports or peek_is_tls(first) is not False:
        await _serve_tls(state, conn, attempt, original, first)
    else:
        await plain.serve(
            state, conn, attempt, first,
            authority_of=lambda head: host_authority(head, original[1]),
            choose=lambda a, v, addresses: dial_order(state, a, v, addresses, original[0]),
        )


async def _first_bytes(state: FirewallState, conn: socket.socket) -> bytes:
    """The first chunk, to tell TLS from plain HTTP on a port that allows either."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(state.policy.limits.header_timeout):
            data = await loop.sock_recv(conn, _READ)
    except TimeoutError:
        raise  # an OSError subclass, but it means "too slow", not "gone"
    except OSError as exc:
        raise ClientGone from exc
    if not data:
        raise ClientGone
    return data


async def _deny(conn: socket.socket, attempt: Attempt, *, alert: bool) -> None:
    attempt.record()
    if alert:
        with contextlib.suppress(OSError):
            await asyncio.get_running_loop().sock_sendall(conn, ACCESS_DENIED_ALERT)


async def _serve_tls(
    state: FirewallState, conn: socket.socket, attempt: Attempt, original: Endpoint, first: bytes
) -> None:
    try:
        hello, peeked = await read_client_hello(state, conn, first)
    except ClientGone:
        return
    except TimeoutError:
        attempt.refuse(Reason.HEADER_TIMEOUT)
        await _deny(conn, attempt, alert=False)
        return
    except ClientHelloError as exc:
        attempt.refuse(exc.reason)
        await _deny(conn, attempt, alert=False)
        return
    attempt.sni = hello.sni
    if _is_our_own(attempt):
        state.log.log_error(
            "redirect loop: Portcullis's own upstream connection came back to it; exempt its"
            " traffic from the redirect (meta mark 0x504c or its uid, see `portcullis nftables`)",
            client=attempt.client, original_dst=attempt.original_dst,
        )
        attempt.refuse(Reason.ADDRESS_FORBIDDEN)
        await _deny(conn, attempt, alert=True)
        return
    host: str | None = None
    if hello.sni is not None:
        try:
            host = sni_host(hello.sni)
        except AuthorityError:
            attempt.refuse(Reason.BAD_NAME)
            await _deny(conn, attempt, alert=True)
            return
    ech_policy = state.policy.transparent.ech
    if host is None:
        # Without a name there is nothing to resolve, so no mode lets it through.
        attempt.refuse(sni_problem(hello, "", False, ech_policy) or Reason.NO_SNI)
        await _deny(conn, attempt, alert=True)
        return
    attempt.host = host
    engine = state.engine
    verdict = engine.decide(unmap(client_address(attempt.client)), host, original[1])
    attempt.set_verdict(verdict)
    problem = sni_problem(hello, host, False, ech_policy) if verdict.allowed else None
    if problem is not None:
        attempt.set_verdict(engine.refuse(problem, verdict.rule))
    if attempt.decision is Decision.DENY:
        await _deny(conn, attempt, alert=True)
        return
    try:
        addresses = await resolve_and_check(state, attempt, verdict, host, False)
        addresses = dial_order(state, attempt, verdict, addresses, original[0])
        upstream = await dial(state, attempt, addresses, original[1])
    except Refused:
        await _deny(conn, attempt, alert=True)
        return
    attempt.record()
    ours = local_endpoint(upstream)
    _our_ends.add(ours)
    state.metrics.connection_opened("transparent")
    try:
        result = await relay(
            conn, upstream, initial_up=peeked, idle_timeout=state.policy.limits.idle_timeout
        )
    finally:
        _our_ends.discard(ours)
        state.metrics.connection_closed("transparent")
    attempt.record_close(result.bytes_up, result.bytes_down, result.close_reason.value)


def _is_our_own(attempt: Attempt) -> bool:
    client = unmap(client_address(attempt.client))
    return (client, attempt.client_port) in _our_ends


def sni_host(sni: str) -> str:
    """The normalized name in a server_name; AuthorityError for what is not a host name."""
    if ":" in sni or "[" in sni:
        raise AuthorityError(f"SNI {sni[:64]!r} is not a host name")
    authority = parse_authority(sni, 443, "SNI")
    if authority.is_ip:
        raise AuthorityError(f"SNI {sni[:64]!r} is an IP literal, which RFC 6066 forbids")
    return authority.host


def dial_order(
    state: FirewallState,
    attempt: Attempt,
    verdict: Verdict,
    addresses: list[IPAddress],
    original: IPAddress,
) -> list[IPAddress]:
    """The checked addresses to dial, the client's own pick first when it is one of them.

    `strict`: the original destination must be among them (Squid's host check);
    otherwise a mismatch is normal (DNS answers differ between client and proxy)
    and the resolved addresses are dialled as they are.
    """
    if original in addresses:
        return [original, *(a for a in addresses if a != original)]
    if state.policy.transparent.strict:
        attempt.set_verdict(state.engine.refuse(Reason.ORIGINAL_DST_MISMATCH, verdict.rule))
        if attempt.decision is Decision.DENY:
            raise Refused(
                Reason.ORIGINAL_DST_MISMATCH, 403,
                f"the client connected to {original}, which is not among the checked"
                f" addresses of {attempt.host}: {', '.join(map(str, addresses))}",
            )
    return addresses


def host_authority(head: RequestHead, port: int) -> Authority:
    """What a redirected plain-HTTP request is decided on: its Host, on the redirected port."""
    if head.method == "CONNECT":
        raise BadRequest("CONNECT on a redirected connection; use the explicit listener")
    hosts = head.get_all("host")
    if len(hosts) != 1:
        raise BadRequest(
            f"{len(hosts)} Host headers; a redirected request is decided on exactly one"
        )
    if head.target.startswith("/"):
        # The proxy check in absolute form covers Host syntax and body framing.
        head = dataclasses.replace(head, target=f"http://{hosts[0]}{head.target}")
    authority = check_request(head)
    return Authority(authority.host, port, authority.is_ip)
