"""Connecting to checked addresses: the first that answers, within one deadline.

Only addresses that passed admission's checks get here, and they are dialled
as they are: no second lookup, so DNS rebinding cannot slip another in.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import time

from portcullis.basics.errors import Refusal
from portcullis.basics.hostport import format_hostport
from portcullis.basics.ip import IPAddress
from portcullis.basics.vocabulary import Reason
from portcullis.net.sockets import SOCKET_MARK
from portcullis.observe.metrics import Metrics
from portcullis.proxy.attempt import Attempt


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
    timeout: float, metrics: Metrics, attempt: Attempt, addresses: list[IPAddress], port: int
) -> socket.socket:
    """Connect to the first address that answers, within `timeout` overall.

    Raises Refusal (connect_failed 502, connect_timeout 504, over_capacity 503).
    """
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    deadline = started + timeout
    last: Refusal | None = None
    for address in addresses:
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            # EMFILE/ENFILE/ENOBUFS: the proxy is out of resources, not the
            # upstream unreachable. The client hears so (503) and may retry.
            message = f"cannot open a socket to {format_hostport(address, port)}: {exc.strerror}"
            raise Refusal(message, reason=Reason.OVER_CAPACITY, status=503) from None
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
            metrics.connect_error("timeout")
            last = Refusal(f"connecting to {format_hostport(address, port)} timed out",
                           reason=Reason.CONNECT_TIMEOUT, status=504)
            break
        except OSError as exc:
            sock.close()
            metrics.connect_error(_error_kind(exc))
            last = Refusal(f"connecting to {format_hostport(address, port)} failed: {exc.strerror}",
                           reason=Reason.CONNECT_FAILED, status=502)
            continue
        attempt.connect_ms = (time.monotonic() - started) * 1000
        metrics.observe_connect(attempt.connect_ms / 1000)
        attempt.dialed = format_hostport(address, port)
        return sock
    assert last is not None
    attempt.connect_ms = (time.monotonic() - started) * 1000
    raise last
