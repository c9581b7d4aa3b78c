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
from ipaddress import IPv4Address

from portcullis.basics.errors import Refusal
from portcullis.basics.hostport import format_hostport
from portcullis.basics.ip import IPAddress, address_text
from portcullis.basics.vocabulary import Reason
from portcullis.net.sockets import SOCKET_MARK
from portcullis.observe.metrics import Metrics
from portcullis.proxy.attempt import Attempt
from portcullis.proxy.reading import wait_ready


def _error_kind(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL):
        return "unreachable"
    return "other"


async def connect_socket(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, address: tuple[str, int],
    deadline: float | None = None,
) -> None:
    """Connect a non-blocking socket to a numeric address; TimeoutError at
    `deadline` (loop time), if one is given.

    Not loop.sock_connect: uvloop's passes every address, numeric or not,
    through getaddrinfo on its thread pool, a thread hand-off per connection.
    """
    err = sock.connect_ex(address)
    if err in (errno.EINPROGRESS, errno.EAGAIN):
        await wait_ready(loop, sock, deadline, write=True)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))  # OSError() picks the errno's subclass


async def dial(
    timeout: float, metrics: Metrics, attempt: Attempt, addresses: list[IPAddress], port: int,
    *, mark: bool = False,
) -> socket.socket:
    """Connect to the first address that answers, within `timeout` overall.

    `mark`: set SOCKET_MARK on the socket, which the nftables rules of a
    same-host transparent set-up exempt from their redirect (tools/nftables.py).
    Raises Refusal (connect_failed 502, connect_timeout 504, over_capacity 503).
    """
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    deadline = loop.time() + timeout
    last: Refusal | None = None
    for address in addresses:
        family = socket.AF_INET if isinstance(address, IPv4Address) else socket.AF_INET6
        try:
            # Non-blocking from the start: no FIONBIO ioctl afterwards.
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            # EMFILE/ENFILE/ENOBUFS: the proxy is out of resources, not the
            # upstream unreachable. The client hears so (503) and may retry.
            message = f"cannot open a socket to {format_hostport(address, port)}: {exc.strerror}"
            raise Refusal(message, reason=Reason.OVER_CAPACITY, status=503) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if mark:
            # Needs CAP_NET_ADMIN; without it the operator exempts the proxy's uid.
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, SOCKET_MARK)
        text = address_text(address)
        try:
            if loop.time() >= deadline:
                raise TimeoutError
            await connect_socket(loop, sock, (text, port), deadline)
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
        attempt.dialed = format_hostport(text, port)
        return sock
    assert last is not None
    attempt.connect_ms = (time.monotonic() - started) * 1000
    raise last
