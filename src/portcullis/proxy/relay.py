"""Byte relay between a client socket and an upstream socket, both directions.

The relay is driven by readiness callbacks (loop.add_reader / add_writer) on raw
non-blocking sockets rather than by asyncio streams: streams copy every chunk
through Python objects, while os.splice moves the bytes socket -> pipe -> socket
inside the kernel, which is what keeps proxy CPU per GiB low. The same
callbacks run on uvloop and on asyncio's selector loop.

Each direction owns a pipe only while bytes are in flight: it takes one from a
small per-thread pool when its source becomes readable and gives it back as
soon as the pipe is empty again. So an idle tunnel holds just its two sockets,
and a busy process holds at most one pipe per direction that is actually
blocked on a slow writer, plus the pool (bounded, a constant).

Backpressure: a direction stops reading its source while anything it has read
is still unwritten, so at most one pipe (or one buffer) per direction is held.

Ownership: relay() closes both sockets before it returns, whatever happened.

The parts: tunnel.py keeps a connection's books (idle timer, ending, closing),
direction.py drives each way, splicing.py and copying.py move the bytes.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import sys
from dataclasses import dataclass

from portcullis.basics.vocabulary import CloseReason
from portcullis.proxy.splicing import SPLICE_AFTER
from portcullis.proxy.tunnel import Tunnel

# Process-wide switch; relay(use_splice=...) overrides it per call (tests cover both).
USE_SPLICE: bool = sys.platform == "linux" and hasattr(os, "splice")


@dataclass(slots=True)
class RelayResult:
    # Bytes handed to the destination socket (so initial_up counts once sent).
    bytes_up: int
    bytes_down: int
    close_reason: CloseReason


async def relay(
    client: socket.socket,
    upstream: socket.socket,
    *,
    initial_up: bytes = b"",
    idle_timeout: float = 300.0,
    use_splice: bool | None = None,
    splice_after: int = SPLICE_AFTER,
) -> RelayResult:
    """Relay bytes both ways until both directions are closed; then close both sockets.

    `initial_up` (bytes already read from the client, e.g. a peeked ClientHello)
    is written to upstream before anything else. EOF from one side becomes
    shutdown(SHUT_WR) on the other while the opposite direction keeps flowing.
    `idle_timeout` <= 0 or inf disables the idle check. `use_splice` None means
    the module's USE_SPLICE; with splice, each direction copies its first
    `splice_after` bytes and splices the rest (splicing.py). Ordinary network
    errors end the relay with a close reason instead of raising; cancelling the
    awaiting task ends it with CloseReason.CANCELLED (the cancellation is
    reported, not re-raised).
    """
    loop = asyncio.get_running_loop()
    splice = USE_SPLICE if use_splice is None else (use_splice and USE_SPLICE)
    after = splice_after if splice else math.inf
    tunnel: Tunnel | None = None
    try:
        for sock in (client, upstream):
            # Admission hands over non-blocking sockets: setblocking() would
            # cost an ioctl each all the same. (On a closed socket it raises
            # the OSError the caller expects.)
            if sock.gettimeout() != 0.0 or sock.fileno() < 0:
                sock.setblocking(False)
        tunnel = Tunnel(loop, client, upstream, initial_up, idle_timeout, after)
        tunnel.start()
        try:
            await tunnel.future
        except asyncio.CancelledError:
            tunnel.finish(CloseReason.CANCELLED)
    except BaseException:
        if tunnel is not None:
            tunnel.finish(CloseReason.ERROR)
            tunnel.close()
        else:
            client.close()
            upstream.close()
        raise
    reason = tunnel.reason
    assert reason is not None
    bytes_up, bytes_down = tunnel.close()
    return RelayResult(bytes_up, bytes_down, reason)
