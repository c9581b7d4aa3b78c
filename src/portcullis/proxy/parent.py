"""Chaining to a parent proxy (`upstream_proxy`): after admission allowed a
connection, ask the parent to `CONNECT name:port` instead of dialling.

Admission has decided and refused by then, so a denied name never reaches the
parent; the parent resolves and dials the name itself (docs/decisions.md,
"A parent proxy resolves the name"). The parent is the operator's own
choice, so its address is not held to the address checks. Its refusal is
`parent_refused` with its status on the record; a parent that cannot be
reached, times out or does not speak HTTP is `parent_failed`. Both answer
`502` (`504` for a timeout): the client must not mistake the parent's `407`
or `403` for Portcullis's own answer.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
import time
from collections.abc import Awaitable, Callable

from portcullis.basics.errors import DnsFailure, ParentAnswerError, Refusal
from portcullis.basics.hostport import format_hostport
from portcullis.basics.ip import IPAddress
from portcullis.basics.vocabulary import Reason
from portcullis.config.chaining import UpstreamProxy
from portcullis.observe.metrics import Metrics
from portcullis.policy.engine import CompiledRule
from portcullis.proxy.attempt import Attempt
from portcullis.proxy.channels import SocketChannel, TlsChannel
from portcullis.proxy.dialer import dial
from portcullis.proxy.gate import Gate
from portcullis.proxy.parent_pump import pump_pair
from portcullis.wire.authority import Authority
from portcullis.wire.connect_reply import ConnectReply, parse_connect_reply


def parent_for(gate: Gate, rule: CompiledRule | None) -> UpstreamProxy | None:
    """The parent a connection decided by `rule` goes through; None to dial directly.

    An allow rule's own `upstream_proxy` wins (`direct`: none); everything else
    (the default, report mode's would-denies) takes the policy's.
    """
    if rule is not None and rule.allows:
        return gate.rule_parents[rule.index]
    return gate.default_parent


def connect_request(parent: UpstreamProxy, target: Authority) -> bytes:
    authority = format_hostport(target.host, target.port)
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if parent.authorization is not None:
        lines.append(f"Proxy-Authorization: {parent.authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _failed(parent: UpstreamProxy, what: str, status: int = 502) -> Refusal:
    return Refusal(f"parent proxy {parent}: {what}", reason=Reason.PARENT_FAILED, status=status)


async def _addresses(gate: Gate, parent: UpstreamProxy) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(parent.host)]
    except ValueError:
        pass
    try:
        answer = await gate.resolver.resolve(parent.host)
    except DnsFailure as exc:
        raise _failed(parent, f"cannot resolve it: {exc}") from None
    return list(answer.addresses)


async def dial_parent(gate: Gate, metrics: Metrics, attempt: Attempt, parent: UpstreamProxy,
                      target: Authority) -> socket.socket:
    """A socket that is a tunnel to `target` through `parent`, or Refusal
    (`parent_failed`, `parent_refused`, `over_capacity`), all within `connect_timeout`."""
    attempt.parent = str(parent)
    timeout = gate.limits.connect_timeout
    deadline = time.monotonic() + timeout
    addresses = await _addresses(gate, parent)
    try:
        sock = await dial(timeout, metrics, attempt, addresses, parent.port,
                          mark=gate.mark_upstream)
    except Refusal as refusal:
        if refusal.reason is Reason.OVER_CAPACITY:
            raise
        status = 504 if refusal.reason is Reason.CONNECT_TIMEOUT else 502
        raise _failed(parent, f"unreachable: {refusal.message}", status) from None
    try:
        async with asyncio.timeout(max(0.001, deadline - time.monotonic())):
            return await _open_tunnel(parent, sock, target, attempt,
                                      gate.limits.idle_timeout)
    except TimeoutError:
        raise _failed(parent, f"no answer to CONNECT within {timeout:g} s", 504) from None
    except ParentAnswerError as exc:
        raise _failed(parent, exc.message) from None
    except ssl.SSLError as exc:
        raise _failed(parent, f"TLS with the parent failed: {exc.reason or exc}") from None
    except OSError as exc:
        raise _failed(parent, f"connection lost: {exc.strerror or exc}") from None


@functools.lru_cache(maxsize=16)
def _tls_context(ca: str | None) -> ssl.SSLContext:
    # Loading the system's CA store costs milliseconds: once per bundle, not per connection.
    return ssl.create_default_context(cafile=ca)


async def _open_tunnel(parent: UpstreamProxy, sock: socket.socket, target: Authority,
                       attempt: Attempt, idle_timeout: float) -> socket.socket:
    """CONNECT through the parent on `sock`, which this function owns from here."""
    channel: SocketChannel | TlsChannel = SocketChannel(sock)
    try:
        if parent.tls:
            channel = TlsChannel(sock, _tls_context(parent.ca), parent.host)
            await channel.handshake()
        await channel.write(connect_request(parent, target))
        reply, rest = await _read_reply(channel.read)
        _check(parent, reply, attempt)
        if not parent.tls and not rest:
            return sock
        # TLS needs a pump; so do bytes the target sent along with the answer
        # (it spoke first): they must reach the client ahead of the rest.
        return pump_pair(channel, rest, idle_timeout)
    except BaseException:
        channel.close()
        raise


async def _read_reply(read: Callable[[], Awaitable[bytes]]) -> tuple[ConnectReply, bytes]:
    buffer = bytearray()
    while True:
        reply = parse_connect_reply(buffer)  # ParentAnswerError for what is not HTTP
        if reply is not None:
            return reply, bytes(buffer[reply.length:])
        data = await read()
        if not data:
            raise ParentAnswerError("the parent proxy closed the connection without an answer")
        buffer += data


def _check(parent: UpstreamProxy, reply: ConnectReply, attempt: Attempt) -> None:
    attempt.parent_status = reply.status
    if not reply.established:
        target = format_hostport(attempt.host or "", attempt.port)
        # A 407 after a bad edit of the credentials file: say so, or the operator
        # looks for the fault at the parent.
        problem = parent.credentials_problem if reply.status == 407 else None
        raise Refusal(f"parent proxy {parent} refused CONNECT {target}: {reply.status}"
                      f" {reply.reason}" + (f" ({problem})" if problem else ""),
                      reason=Reason.PARENT_REFUSED, status=502)
