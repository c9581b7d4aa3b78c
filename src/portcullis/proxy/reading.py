"""Reading from a client until a parser is satisfied, within one deadline.

The parsers (wire/) are sans-IO; this is the I/O half: receive into a buffer,
hand it to the parser, stop at a value, a parser error, the deadline, or the
client's end of stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import Callable
from typing import TypeVar

from portcullis.proxy.deadlines import deadlines_for
from portcullis.proxy.reactor import reactor_for
from portcullis.wire.http1 import RequestHead, parse_request_head
from portcullis.wire.tls import ClientHello, parse_client_hello

T = TypeVar("T")
_READ = 65536
# Seconds a client gets to take the rest of a short answer that did not fit
# the socket's buffer (only a client that stopped reading leaves no room).
ANSWER_TIMEOUT = 10.0


class ClientGone(Exception):
    """The client closed or reset before sending what was waited for.

    Control flow inside the proxy, never raised to a caller outside it.
    """


async def read_until(
    conn: socket.socket, buffer: bytearray, timeout: float, parse: Callable[[bytearray], T | None],
    *, answered: bool = False,
) -> T:
    """Receive into `buffer` until `parse` returns a value, within `timeout` overall.

    `answered`: the client was sent an answer just now and waits for it before
    it goes on, so its next bytes cannot be in yet (unless an event already
    said some came): wait for them rather than try a read that fails.
    TimeoutError when too slow, ClientGone when the client closed or reset, and
    whatever `parse` raises for bad bytes.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = parse(buffer) if buffer else None
        if result is not None:
            return result
        if answered:
            answered = False
            # A socket watched for the first time is reported as it is at the
            # next poll, so bytes that are in after all end the wait at once.
            if not reactor_for(loop).watch(conn).readable:
                await wait_ready(loop, conn, deadline)
        while True:
            try:
                # The bytes are often in already: a plain recv() then saves a
                # reader registration and a loop round trip (bench/RESULTS.md).
                data = conn.recv(_READ)
                break
            except BlockingIOError:
                if loop.time() >= deadline:
                    raise TimeoutError from None
                await wait_ready(loop, conn, deadline)
            except OSError as exc:
                raise ClientGone from exc
        if not data:
            raise ClientGone
        buffer += data


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def wait_ready(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                     deadline: float | None, *, write: bool = False) -> None:
    """Until `sock` is readable (writable with `write`), or TimeoutError at
    `deadline` (loop time; None for no deadline). Call it right after the
    socket answered EAGAIN: only an event from then on ends the wait.

    The socket is registered once for its life (proxy/reactor.py); a wait is a
    future, a callback slot and a deadline (proxy/deadlines.py: at most TICK late).
    """
    watch = reactor_for(loop).watch(sock)
    waiter = loop.create_future()
    wake = functools.partial(_wake, waiter)
    if write:
        watch.writable = False
        watch.on_write = wake
    else:
        watch.readable = 0
        watch.on_read = wake
    deadlines, slot = None, 0
    if deadline is not None:
        deadlines = deadlines_for(loop)
        slot = deadlines.add(deadline, waiter, _expire)
    try:
        await waiter
    finally:
        if deadlines is not None:
            deadlines.cancel(slot, waiter)
        if write:
            watch.on_write = None
        else:
            watch.on_read = None


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def read_head(
    conn: socket.socket, buffer: bytearray, timeout: float, max_bytes: int
) -> tuple[RequestHead, bytes]:
    """Read one request head within `timeout`; return it and any bytes after it."""
    head = await read_until(conn, buffer, timeout, lambda b: parse_request_head(b, max_bytes))
    return head, bytes(buffer[head.head_length :])


async def read_client_hello(
    conn: socket.socket, peeked: bytes, timeout: float, *, answered: bool = False
) -> tuple[ClientHello, bytes]:
    """Read until a whole ClientHello is in; TimeoutError, ClientGone or ClientHelloError.
    (`answered`: as for read_until; after the `200` to a CONNECT.)"""
    buffer = bytearray(peeked)
    hello = await read_until(conn, buffer, timeout, parse_client_hello, answered=answered)
    return hello, bytes(buffer)


async def send_all(conn: socket.socket, data: bytes) -> None:
    """Send all of `data` (a short answer); OSError as the socket's send gives
    it, TimeoutError (an OSError) when the client takes none of the rest in
    ANSWER_TIMEOUT seconds."""
    try:
        sent = conn.send(data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        # A short answer fits a socket's buffer unless the client stopped
        # reading: only then does this cost a registration and a coroutine,
        # and a bound, or a client that never reads would keep its slot.
        async with asyncio.timeout(ANSWER_TIMEOUT):
            await asyncio.get_running_loop().sock_sendall(conn, data[sent:])


async def send_quietly(conn: socket.socket, data: bytes) -> None:
    """Send a last answer; a client that already left is no error."""
    with contextlib.suppress(OSError):
        await send_all(conn, data)
