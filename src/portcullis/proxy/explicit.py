"""The explicit listener: clients that set HTTPS_PROXY / HTTP_PROXY.

`CONNECT host:port` is decided on the authority, resolved and checked, dialled,
answered `200`; then the client's first bytes are peeked: on a TLS port they
must be a ClientHello whose SNI is the CONNECT host. Absolute-form requests
(`GET http://host/...`) go to the plain-HTTP path.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import TypeVar

from portcullis.policy.decisions import Decision, Reason
from portcullis.policy.names import InvalidName, normalize_name
from portcullis.proxy import plain
from portcullis.proxy.relay import relay
from portcullis.proxy.responses import error_response
from portcullis.proxy.state import Attempt, FirewallState, client_address, serve_connection
from portcullis.proxy.upstream import Refused, dial, resolve_and_check
from portcullis.wire.authority import Authority
from portcullis.wire.http1 import HttpError, RequestHead, check_request, parse_request_head
from portcullis.wire.tls import ClientHello, ClientHelloError, parse_client_hello

T = TypeVar("T")
ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
_READ = 65536


class ClientGone(Exception):
    """The client closed or reset before sending a whole request head."""


async def read_until(
    conn: socket.socket, buffer: bytearray, timeout: float, parse: Callable[[bytearray], T | None]
) -> T:
    """Receive into `buffer` until `parse` returns a value, within `timeout` overall.

    TimeoutError when too slow, ClientGone when the client closed or reset, and
    whatever `parse` raises for bad bytes.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = parse(buffer) if buffer else None
        if result is not None:
            return result
        try:
            # The bytes are often in already: a plain recv() then saves a reader
            # registration, a future and a loop round trip (bench/findings.md).
            data = conn.recv(_READ)
        except BlockingIOError:
            if loop.time() >= deadline:
                raise TimeoutError from None
            try:
                # asyncio.timeout_at, not wait_for: on 3.11 wait_for wraps the
                # awaitable in a new Task on every call.
                async with asyncio.timeout_at(deadline):
                    data = await loop.sock_recv(conn, _READ)
            except TimeoutError:
                raise  # an OSError subclass, but it means "too slow", not "gone"
            except OSError as exc:
                raise ClientGone from exc
        except OSError as exc:
            raise ClientGone from exc
        if not data:
            raise ClientGone
        buffer += data


async def read_head(
    state: FirewallState, conn: socket.socket, buffer: bytearray
) -> tuple[RequestHead, bytes]:
    """Read one request head within the header timeout; return it and any bytes after it."""
    limits = state.policy.limits
    head = await read_until(
        conn, buffer, limits.header_timeout, lambda b: parse_request_head(b, limits.header_bytes)
    )
    return head, bytes(buffer[head.head_length :])


async def read_client_hello(
    state: FirewallState, conn: socket.socket, peeked: bytes
) -> tuple[ClientHello, bytes]:
    """Read until a whole ClientHello is in; TimeoutError, ClientGone or ClientHelloError."""
    buffer = bytearray(peeked)
    timeout = state.policy.limits.client_hello_timeout
    hello = await read_until(conn, buffer, timeout, parse_client_hello)
    return hello, bytes(buffer)


def sni_problem(hello: ClientHello, host: str, is_ip: bool, ech_policy: str) -> Reason | None:
    """Why this ClientHello may not go to `host`, or None when it may."""
    if hello.has_ech and ech_policy == "deny":
        return Reason.ECH_PRESENT
    if hello.sni is None:
        # Clients send no SNI to an IP literal; for a name its absence hides the target.
        return None if is_ip else Reason.NO_SNI
    try:
        sni = normalize_name(hello.sni)
    except InvalidName:
        return Reason.SNI_MISMATCH
    return None if sni == host else Reason.SNI_MISMATCH


async def send_quietly(conn: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        await asyncio.get_running_loop().sock_sendall(conn, data)


async def handle_explicit(state: FirewallState, conn: socket.socket, peer: tuple[str, int]) -> None:
    """Serve one client connection of the explicit listener; always closes `conn`."""
    await serve_connection(state, conn, peer, "explicit", _serve)


async def _serve(state: FirewallState, conn: socket.socket, attempt: Attempt) -> None:
    buffer = bytearray()
    try:
        head, rest = await read_head(state, conn, buffer)
        # Checked on the strict parser's head, not only on h11's view of it
        # later: h11 merges repeated equal Content-Length fields, and a CONNECT
        # never reaches h11 (a second Host or a body on it is refused here).
        authority = check_request(head)
    except ClientGone:
        return
    except TimeoutError:
        attempt.refuse(Reason.HEADER_TIMEOUT)
        attempt.record()
        await send_quietly(conn, error_response(408, attempt, "no complete request head in time"))
        return
    except HttpError as exc:
        attempt.refuse(exc.reason)
        attempt.record()
        await send_quietly(conn, error_response(exc.status, attempt, exc.message))
        return
    if head.method == "CONNECT":
        await _connect(state, conn, attempt, authority, rest)
    else:
        attempt.mode = "http"
        await plain.serve(state, conn, attempt, bytes(buffer))


async def _connect(
    state: FirewallState, conn: socket.socket, attempt: Attempt, authority: Authority, rest: bytes
) -> None:
    host, port, is_ip = authority.host, authority.port, authority.is_ip
    attempt.host, attempt.port = host, port
    engine = state.engine
    client_ip = client_address(attempt.client)
    verdict = engine.decide(client_ip, host, port, is_ip=is_ip)
    attempt.set_verdict(verdict)
    if not verdict.allowed:
        attempt.record()
        await send_quietly(conn, error_response(403, attempt))
        return
    try:
        addresses = await resolve_and_check(state, attempt, verdict, host, is_ip)
        upstream = await dial(state, attempt, addresses, port)
    except Refused as refusal:
        attempt.record()
        await send_quietly(conn, error_response(refusal.status, attempt, refusal.message))
        return
    try:
        await asyncio.get_running_loop().sock_sendall(conn, ESTABLISHED)
        peeked = rest
        if port in state.policy.tls_ports:
            problem: Reason | None
            try:
                hello, peeked = await read_client_hello(state, conn, rest)
                problem = sni_problem(hello, host, is_ip, state.policy.transparent.ech)
                attempt.sni = hello.sni
            except ClientHelloError as exc:
                problem = exc.reason
            except TimeoutError:
                problem = Reason.HEADER_TIMEOUT
            if problem is not None:
                attempt.set_verdict(engine.refuse(problem, verdict.rule))
                if problem in (Reason.HEADER_TIMEOUT, Reason.BAD_REQUEST):
                    attempt.refuse(problem)  # no mode lets an unreadable hello through
                if attempt.decision is Decision.DENY:
                    attempt.record()
                    upstream.close()
                    return
    except (ClientGone, OSError):
        # The decision stands (the tunnel was allowed); the close record says
        # the client left before its first bytes.
        attempt.record()
        attempt.record_close(0, 0, "client_gone")
        upstream.close()
        return
    except BaseException:
        upstream.close()
        raise
    attempt.record()
    state.metrics.connection_opened("explicit")
    try:
        result = await relay(
            conn, upstream, initial_up=peeked, idle_timeout=state.policy.limits.idle_timeout
        )
    finally:
        state.metrics.connection_closed("explicit")
    attempt.record_close(result.bytes_up, result.bytes_down, result.close_reason.value)

