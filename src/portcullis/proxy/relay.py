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
import errno
import os
import socket
import sys
from dataclasses import dataclass

from portcullis.basics.vocabulary import CloseReason
from portcullis.proxy.flow import Flow

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
) -> RelayResult:
    """Relay bytes both ways until both directions are closed; then close both sockets.

    `initial_up` (bytes already read from the client, e.g. a peeked ClientHello)
    is written to upstream before anything else. EOF from one side becomes
    shutdown(SHUT_WR) on the other while the opposite direction keeps flowing.
    `idle_timeout` <= 0 or inf disables the idle check. `use_splice` None means
    the module's USE_SPLICE. Ordinary network errors end the relay with a
    close reason instead of raising; cancelling the awaiting task ends it with
    CloseReason.CANCELLED (the cancellation is reported, not re-raised).
    """
    loop = asyncio.get_running_loop()
    splice = USE_SPLICE if use_splice is None else (use_splice and USE_SPLICE)
    if client.fileno() < 0 or upstream.fileno() < 0:  # a caller's bug
        client.close()
        upstream.close()
        raise OSError(errno.EBADF, "relay of a closed socket")
    flow = Flow(loop, idle_timeout, splice)
    try:
        try:
            await flow.start(client, upstream, initial_up)
            if await flow.future is None:
                assert flow.tunnel is not None
                await flow.tunnel.future
        except asyncio.CancelledError:
            _end(flow, CloseReason.CANCELLED)
    except BaseException:
        _end(flow, CloseReason.ERROR)
        # Sockets no transport took yet (closing one a transport holds only marks it).
        client.close()
        upstream.close()
        await flow.closed
        raise
    tunnel = flow.tunnel
    if tunnel is not None:
        tunnel.close()
    await flow.closed  # the transports' own fds are closed too
    up, down = flow.final
    if tunnel is None:
        reason = flow.reason
    else:
        reason = tunnel.reason
        up, down = up + tunnel.up.nbytes, down + tunnel.down.nbytes
    assert reason is not None
    return RelayResult(up, down, reason)


def _end(flow: Flow, reason: CloseReason) -> None:
    if flow.tunnel is not None:
        flow.tunnel.finish(reason)
    else:
        flow.finish(reason)
