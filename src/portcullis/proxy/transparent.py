"""The transparent listener: connections redirected by nftables/iptables (docs/semantics.md §4).

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
import socket

from portcullis.basics.errors import (
    AuthorityError,
    BadRequest,
    ClientHelloError,
    NoOriginalDestination,
    Refusal,
)
from portcullis.basics.ip import peer_address
from portcullis.basics.vocabulary import Mode, Reason
from portcullis.net.sockets import (
    Endpoint,
    format_endpoint,
    local_endpoint,
    original_dst,
)
from portcullis.proxy import plain
from portcullis.proxy.admission import admit, hello_problem
from portcullis.proxy.attempt import Attempt
from portcullis.proxy.balanced import BALANCED
from portcullis.proxy.inspecting import inspects, serve_inspected
from portcullis.proxy.reading import ClientGone, read_client_hello
from portcullis.proxy.state import FirewallState, serve_connection
from portcullis.wire.authority import Authority, parse_authority
from portcullis.wire.http1 import RequestHead, check_request
from portcullis.wire.tls import peek_is_tls

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
    await serve_connection(state, conn, peer, Mode.TRANSPARENT, _serve)


async def _serve(state: FirewallState, conn: socket.socket, attempt: Attempt) -> None:
    here = local_endpoint(conn)
    original = _original_of(conn)
    if original is None or original == here:
        # Not redirected: someone dialled the listener itself. There is no
        # destination to decide on, and the listener is not an open relay.
        attempt.original_dst = format_endpoint(original or here)
        attempt.port = here[1]
        state.refuse_and_record(attempt, Reason.ADDRESS_FORBIDDEN)
        return
    attempt.original_dst = format_endpoint(original)
    attempt.port = original[1]
    tls_ports = state.gate.tls_ports
    header_timeout = state.gate.limits.header_timeout
    started = asyncio.get_running_loop().time()
    try:
        first = b"" if original[1] in tls_ports else await _first_bytes(state, conn)
    except ClientGone:
        return
    except TimeoutError:
        state.refuse_and_record(attempt, Reason.HEADER_TIMEOUT)
        return
    if original[1] in tls_ports or peek_is_tls(first) is not False:
        await _serve_tls(state, conn, attempt, original, first)
    else:
        await plain.serve(
            state, conn, attempt, first,
            authority_of=lambda head: host_authority(head, original[1]),
            original=original[0],
            # One header_timeout for the first head, the first bytes' wait included.
            first_head_timeout=max(
                0.001, started + header_timeout - asyncio.get_running_loop().time()
            ),
        )


async def _first_bytes(state: FirewallState, conn: socket.socket) -> bytes:
    """The first chunk, to tell TLS from plain HTTP on a port that allows either."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(state.gate.limits.header_timeout):
            data = await loop.sock_recv(conn, _READ)
    except TimeoutError:
        raise  # an OSError subclass, but it means "too slow", not "gone"
    except OSError as exc:
        raise ClientGone from exc
    if not data:
        raise ClientGone
    return data


async def _deny(state: FirewallState, conn: socket.socket, attempt: Attempt,
                reason: Reason | None = None, *, alert: bool = True) -> None:
    if reason is not None:
        state.refuse_and_record(attempt, reason)
    else:
        state.record(attempt)
    if alert:
        with contextlib.suppress(OSError):
            await asyncio.get_running_loop().sock_sendall(conn, ACCESS_DENIED_ALERT)


async def _serve_tls(
    state: FirewallState, conn: socket.socket, attempt: Attempt, original: Endpoint, first: bytes
) -> None:
    gate = state.gate
    try:
        hello, peeked = await read_client_hello(
            conn, first, gate.limits.client_hello_timeout
        )
    except ClientGone:
        return
    except TimeoutError:
        await _deny(state, conn, attempt, Reason.HEADER_TIMEOUT, alert=False)
        return
    except ClientHelloError as exc:
        await _deny(state, conn, attempt, exc.reason, alert=False)
        return
    attempt.sni = hello.sni
    if _is_our_own(attempt):
        _log_loop(state, attempt)
        await _deny(state, conn, attempt, Reason.ADDRESS_FORBIDDEN)
        return
    if hello.sni is None:
        # Without a name there is nothing to decide on or resolve: no mode lets it through.
        await _deny(state, conn, attempt,
                    hello_problem(gate, None, hello.has_ech, "", False) or Reason.NO_SNI)
        return
    try:
        host = sni_host(hello.sni)
    except AuthorityError:
        await _deny(state, conn, attempt, Reason.BAD_NAME)
        return
    try:
        upstream = await admit(
            gate, state.metrics, attempt, Authority(host, original[1], False),
            hello=(hello.sni, hello.has_ech), original=original[0],
        )
    except Refusal:
        await _deny(state, conn, attempt)
        return
    # A tunnel through an https:// parent is a local socket pair: no IP end to loop back.
    ours = local_endpoint(upstream) if upstream.family != socket.AF_UNIX else None
    if ours is not None:
        _our_ends.add(ours)
    try:
        inspection = inspects(attempt)
        if inspection is not None:
            await serve_inspected(state, conn, upstream, peeked, attempt, hello.alpn, inspection)
            return
        await state.relay_tunnel(attempt, conn, upstream, peeked,
                                 gate.limits.idle_timeout)
    finally:
        if ours is not None:
            _our_ends.discard(ours)


def refuse_at_accept(state: FirewallState, conn: socket.socket, attempt: Attempt,
                     reason: Reason) -> None:
    """A redirected connection refused before its first byte is read (a stranger,
    or over the limit): recorded with where it was going, and on a TLS port
    answered with a TLS alert. Our own looping connection is called that."""
    original = _original_of(conn) or local_endpoint(conn)
    attempt.original_dst = format_endpoint(original)
    attempt.port = original[1]
    if _is_our_own(attempt):
        _log_loop(state, attempt)
        reason = Reason.ADDRESS_FORBIDDEN
    state.refuse_and_record(attempt, reason)
    if original[1] in state.gate.tls_ports:
        with contextlib.suppress(OSError):
            conn.send(ACCESS_DENIED_ALERT)


def _original_of(conn: socket.socket) -> Endpoint | None:
    """Where the client was going: the PROXY protocol header's destination when a
    balancer in front sent one, else the redirect record (None without one)."""
    balanced = BALANCED.get()
    if balanced is not None and balanced.destination is not None:
        return balanced.destination
    try:
        return original_dst(conn)
    except NoOriginalDestination:
        return None


def _log_loop(state: FirewallState, attempt: Attempt) -> None:
    state.log.log_error(
        "redirect loop: Portcullis's own upstream connection came back to it; exempt its"
        " traffic from the redirect (meta mark 0x504c or its uid, see `portcullis nftables`)",
        client=attempt.client, original_dst=attempt.original_dst,
    )


def _is_our_own(attempt: Attempt) -> bool:
    return (peer_address(attempt.client), attempt.client_port) in _our_ends


def sni_host(sni: str) -> str:
    """The normalized name in a server_name; AuthorityError for what is not a host name."""
    if ":" in sni or "[" in sni:
        raise AuthorityError(f"SNI {sni[:64]!r} is not a host name")
    authority = parse_authority(sni, 443, "SNI")
    if authority.is_ip:
        raise AuthorityError(f"SNI {sni[:64]!r} is an IP literal, which RFC 6066 forbids")
    return authority.host


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
        head = head._replace(target=f"http://{hosts[0]}{head.target}")
    authority = check_request(head)
    return Authority(authority.host, port, authority.is_ip)
