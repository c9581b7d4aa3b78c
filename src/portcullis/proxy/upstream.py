"""From an allowed name to a connected upstream socket (DESIGN §1 "Address safety").

Resolve the name ourselves, classify every candidate address, and dial only an
address that passed: the address checked is the address dialled, with no second
lookup in between, so DNS rebinding cannot slip a forbidden address in.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import os
import socket
import time
from collections.abc import Sequence

from portcullis.config import IPAddress, IPNetwork, parse_network
from portcullis.net.addresses import AddressVerdict, check_addresses
from portcullis.net.resolver import DnsFailure
from portcullis.policy.decisions import Decision, Reason
from portcullis.policy.engine import Verdict
from portcullis.proxy.state import Attempt, FirewallState

# Outbound sockets carry this mark so a same-host nftables redirect can exempt
# the proxy's own traffic (see `portcullis nftables`).
SOCKET_MARK = 0x504C  # "PL"


class Refused(Exception):
    """The request ends here: `status` for an HTTP answer, `reason` for the log."""

    def __init__(self, reason: Reason, status: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.message = message


def vouched_ranges(verdict: Verdict, is_ip: bool) -> tuple[IPNetwork, ...] | None:
    """The CIDRs the deciding rule vouches for, beyond the global checks; None for none."""
    rule = verdict.rule
    # A deny rule reaches this point only in report mode: its CIDRs name what it
    # keeps out, and a dry run must not turn them into addresses it may dial.
    if rule is None or rule.action is not Decision.ALLOW:
        return None
    if is_ip:
        # A CIDR destination names the addresses itself: it vouches for them.
        return tuple(parse_network(d) for d in rule.destinations if "/" in d)
    return rule.resolves_to


def address_refusal(verdicts: Sequence[AddressVerdict]) -> Reason | None:
    """Why none of the checked addresses may be dialled; None when one may."""
    if any(v.allowed for v in verdicts):
        return None
    outside = bool(verdicts) and all(v.outside_resolves_to for v in verdicts)
    return Reason.RESOLVES_OUTSIDE if outside else Reason.ADDRESS_FORBIDDEN


@functools.lru_cache(maxsize=4096)
def _admission(
    addresses: tuple[IPAddress, ...],
    allow_ranges: tuple[IPNetwork, ...],
    resolves_to: tuple[IPNetwork, ...] | None,
    own: frozenset[IPAddress],
) -> tuple[tuple[str, ...], tuple[AddressVerdict, ...]]:
    # Pure in its arguments, and the same few answers recur for every
    # connection to a name: classifying and describing them each time was a
    # visible share of the per-connection CPU (bench/findings.md).
    # A tuple: the cached answer is shared by every caller and must not change.
    verdicts = check_addresses(
        addresses, allow_ranges=allow_ranges, resolves_to=resolves_to, own=own
    )
    return tuple(str(a) for a in addresses), tuple(verdicts)


async def resolve_and_check(
    state: FirewallState, attempt: Attempt, verdict: Verdict, host: str, is_ip: bool
) -> list[IPAddress]:
    """The addresses that may be dialled for `host`, in order; Refused when none."""
    if is_ip:
        addresses: tuple[IPAddress, ...] = (ipaddress.ip_address(host),)
    else:
        started = time.monotonic()
        try:
            resolution = await state.resolver.resolve(host)
        except DnsFailure as exc:
            attempt.dns_ms = (time.monotonic() - started) * 1000
            state.metrics.observe_dns(attempt.dns_ms / 1000)
            attempt.refuse(Reason.DNS_FAILURE)
            raise Refused(Reason.DNS_FAILURE, 502, f"cannot resolve {host}: {exc}") from None
        attempt.dns_ms = (time.monotonic() - started) * 1000
        state.metrics.observe_dns(attempt.dns_ms / 1000)
        addresses = resolution.addresses
    attempt.resolved, verdicts = _admission(
        tuple(addresses),
        tuple(state.policy.resolver.allow_ranges),
        vouched_ranges(verdict, is_ip),
        state.own,
    )
    reason = address_refusal(verdicts)
    if reason is None:
        return [v.address for v in verdicts if v.allowed]
    attempt.refuse(reason)
    detail = "; ".join(f"{v.address}: {v.why}" for v in verdicts) or "no addresses"
    raise Refused(reason, 403, f"{host} resolves to no permitted address ({detail})")


def _error_kind(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL):
        return "unreachable"
    return "other"


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def connect_socket(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, address: tuple[str, int]
) -> None:
    """Connect a non-blocking socket to a numeric address.

    Not loop.sock_connect: uvloop's passes every address, numeric or not,
    through getaddrinfo on its thread pool, a thread hand-off per connection.
    """
    err = sock.connect_ex(address)
    if err in (errno.EINPROGRESS, errno.EAGAIN):
        waiter: asyncio.Future[None] = loop.create_future()
        fd = sock.fileno()
        loop.add_writer(fd, _wake, waiter)
        try:
            await waiter
        finally:
            loop.remove_writer(fd)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))  # OSError() picks the errno's subclass


async def dial(
    state: FirewallState, attempt: Attempt, addresses: list[IPAddress], port: int
) -> socket.socket:
    """Connect to the first address that answers, within the connect timeout overall."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + state.policy.limits.connect_timeout
    started = time.monotonic()
    last: Refused | None = None
    for address in addresses:
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            # EMFILE/ENFILE/ENOBUFS: the proxy is out of resources, not the
            # upstream unreachable. The client hears so (503) and may retry.
            attempt.refuse(Reason.OVER_CAPACITY)
            message = f"cannot open a socket to {address}:{port}: {exc.strerror}"
            raise Refused(Reason.OVER_CAPACITY, 503, message) from None
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Needs CAP_NET_ADMIN; only a same-host transparent set-up relies on it.
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, SOCKET_MARK)
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            # asyncio.timeout, not wait_for: on 3.11 wait_for costs a new Task per call.
            async with asyncio.timeout(remaining):
                await connect_socket(loop, sock, (str(address), port))
        except asyncio.CancelledError:
            sock.close()
            raise
        except TimeoutError:
            sock.close()
            state.metrics.connect_error("timeout")
            last = Refused(Reason.CONNECT_TIMEOUT, 504, f"connecting to {address}:{port} timed out")
            break
        except OSError as exc:
            sock.close()
            state.metrics.connect_error(_error_kind(exc))
            last = Refused(
                Reason.CONNECT_FAILED, 502, f"connecting to {address}:{port} failed: {exc.strerror}"
            )
            continue
        attempt.connect_ms = (time.monotonic() - started) * 1000
        state.metrics.observe_connect(attempt.connect_ms / 1000)
        attempt.dialed = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
        return sock
    assert last is not None
    attempt.connect_ms = (time.monotonic() - started) * 1000
    attempt.refuse(last.reason)
    raise last
