"""The explicit listener served over TLS (`listen.explicit_tls`, `auth.tls`).

Clients reach it as `HTTPS_PROXY=https://...`. A client certificate signed by
`auth.tls.client_ca` is the client's identity (its first SAN, DNS, URI or
email, else its subject CN: docs/semantics.md §11); without one the client may
still log in with `Proxy-Authorization`, now over TLS. After the handshake the
plaintext is carried over a socket pair to the ordinary explicit handler, so
the CONNECT, plain-HTTP and relay paths are the very same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Any

from portcullis.basics.errors import ListenError
from portcullis.basics.vocabulary import Mode, Reason
from portcullis.config.access import ServerTLS
from portcullis.observe.events import new_connection_id
from portcullis.proxy.attempt import Attempt
from portcullis.proxy.explicit import handle_explicit
from portcullis.proxy.reactor import reactor_for
from portcullis.proxy.state import FirewallState

_READ = 65536
_SAN_KINDS = ("DNS", "URI", "email")


def server_context(tls: ServerTLS) -> ssl.SSLContext:
    """The listener's TLS context; ListenError naming the file that cannot be used."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.certificate, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise ListenError(f"explicit_tls: cannot use auth.tls.certificate {tls.certificate}"
                          f" with its key {tls.key}: {exc}") from None
    if tls.client_ca is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ListenError(f"explicit_tls: cannot read auth.tls.client_ca"
                              f" {tls.client_ca}: {exc}") from None
        # Optional: a client without a certificate may still log in with a password.
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def certificate_identity(cert: Any) -> str | None:
    """The identity of a verified peer certificate (`getpeercert()`): its first
    SAN of kind DNS, URI or email, else its subject's CN; None without one."""
    if not cert:
        return None
    for kind, value in cert.get("subjectAltName", ()):
        if kind in _SAN_KINDS:
            return str(value)
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


async def handle_explicit_tls(state: FirewallState, conn: socket.socket,
                              peer: tuple[str, int], *, context: ssl.SSLContext) -> None:
    """Handshake, then serve the plaintext as the explicit listener does."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_READ)
    protocol = asyncio.StreamReaderProtocol(reader)
    timeout = state.gate.limits.header_timeout
    # A PROXY header read before left the socket in our epoll; the transport watches it now.
    reactor_for(loop).forget(conn)
    try:
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol, conn, ssl=context, ssl_handshake_timeout=timeout)
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        _handshake_failed(state, conn, peer, exc)
        return
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    certified = certificate_identity(transport.get_extra_info("peercert"))
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    up = asyncio.create_task(_pump_up(reader, ours))
    down = asyncio.create_task(_pump_down(ours, writer))
    try:
        await handle_explicit(state, theirs, peer, mode=Mode.EXPLICIT_TLS, certified=certified)
        # The handler closed its end: what it wrote is on its way to the client.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(down), timeout)
    finally:
        up.cancel()
        down.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
        ours.close()
        writer.close()


def _handshake_failed(state: FirewallState, conn: socket.socket, peer: tuple[str, int],
                      exc: BaseException) -> None:
    conn.close()
    attempt = Attempt(Mode.EXPLICIT_TLS, peer[0], peer[1], new_connection_id())
    # A certificate the client CA did not sign is a failed login; anything else
    # (plain HTTP on the TLS port, a timeout) a bad request.
    bad_cert = isinstance(exc, ssl.SSLError) and "CERTIFICATE" in str(exc).upper()
    state.refuse_and_record(attempt, Reason.AUTH_FAILED if bad_cert else Reason.BAD_REQUEST)
    state.log.log_info("tls handshake failed", client=peer[0], error=str(exc)[:200])


async def _pump_up(reader: asyncio.StreamReader, ours: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    try:
        while data := await reader.read(_READ):
            await loop.sock_sendall(ours, data)
    except (OSError, ssl.SSLError):
        pass
    with contextlib.suppress(OSError):
        ours.shutdown(socket.SHUT_WR)  # the client's end of stream, passed on


async def _pump_down(ours: socket.socket, writer: asyncio.StreamWriter) -> None:
    loop = asyncio.get_running_loop()
    with contextlib.suppress(OSError, ssl.SSLError):
        while data := await loop.sock_recv(ours, _READ):
            writer.write(data)
            await writer.drain()
