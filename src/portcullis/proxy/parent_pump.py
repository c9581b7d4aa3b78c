"""A tunnel through a parent that the relay cannot take as a plain socket (TLS to
an https:// parent, or bytes the target sent along with the parent's answer),
handed to it as one end of a socket pair while a task pumps between the other
end and the parent's channel (proxy/channels.py).

The relay (proxy/relay.py) moves bytes between file descriptors; TLS records
need an SSL object in between. A pair keeps the relay, the plain-HTTP path and
the transparent path unchanged for every kind of parent, at the cost of one
more copy per byte for https:// parents.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from portcullis.proxy.channels import Channel

_READ = 65536
# Pump tasks run detached from the connection's task: keep them referenced.
_pumps: set[asyncio.Task[None]] = set()


def pump_pair(parent: Channel, first_down: bytes, idle_timeout: float) -> socket.socket:
    """The relay's end of a pair whose other end is pumped to and from `parent`;
    `first_down` is what the parent already sent towards the client."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    theirs.setblocking(False)
    task = asyncio.get_running_loop().create_task(
        _pump(parent, ours, first_down, idle_timeout))
    _pumps.add(task)
    task.add_done_callback(_pumps.discard)
    return theirs


async def _pump(parent: Channel, ours: socket.socket, first_down: bytes,
                idle_timeout: float) -> None:
    down = asyncio.ensure_future(_down(parent, ours, first_down))
    up = asyncio.ensure_future(_up(parent, ours))
    try:
        done, _ = await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
        if up in done and (not parent.can_half_close or up.exception() is not None):
            down.cancel()
        elif down in done and down.exception() is not None:
            up.cancel()
        # The client's EOF may be the relay closing the pair for good, which a
        # Unix socket does not tell from a half-close: a silent parent is not
        # waited for beyond the idle timeout the relay itself keeps.
        await asyncio.wait({down, up}, timeout=idle_timeout)
    finally:
        down.cancel()
        up.cancel()
        parent.close()
        ours.close()


async def _down(parent: Channel, ours: socket.socket, first: bytes) -> None:
    """Parent -> client: its bytes into our end of the pair; its EOF as a half-close."""
    loop = asyncio.get_running_loop()
    data = first
    while True:
        if data:
            await loop.sock_sendall(ours, data)
        data = await parent.read()
        if not data:
            with contextlib.suppress(OSError):
                ours.shutdown(socket.SHUT_WR)
            return


async def _up(parent: Channel, ours: socket.socket) -> None:
    """Client -> parent: what the relay wrote into the pair; its EOF passed on when it can be."""
    loop = asyncio.get_running_loop()
    while True:
        data = await loop.sock_recv(ours, _READ)
        if not data:
            parent.write_eof()
            return
        await parent.write(data)
