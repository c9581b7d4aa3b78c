"""The relay of the protocol-from-accept experiment (proxy/accepted.py): two
transports joined, each protocol writing what it reads into the other's.

No splice: uvloop reads into a bytes object and writes it (copies in user
space), which is what the experiment weighs against the splice relay
(bench/RESULTS.md, "Protocol from accept: the experiment"). Back-pressure is
the transports' own: a side whose write buffer is full pauses reading its
peer. EOF becomes `write_eof()` on the other side, as the splice relay's
shutdown(SHUT_WR); a reset becomes an abort, so the other peer sees a reset too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from portcullis.basics.vocabulary import CloseReason

# The errors a peer's disappearance gives; anything else is an "error".
_RESETS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, TimeoutError)


class Side(asyncio.Protocol):
    """One socket of a pair: what it reads goes to the other side's transport."""

    __slots__ = ("eof", "nbytes", "other", "pair", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.other: Side | None = None
        self.pair: Pair | None = None
        self.nbytes = 0  # bytes this side read and passed on
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        assert self.other is not None and self.other.transport is not None
        self.nbytes += len(data)
        self.other.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        other = self.other
        if other is not None and other.transport is not None and \
                not other.transport.is_closing() and other.transport.can_write_eof():
            other.transport.write_eof()
        if self.pair is not None:
            self.pair.side_ended()
        return True  # keep the socket open for the other direction

    # Our write buffer is full: stop reading the side that fills it.
    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pair is None:
            return
        if exc is None:
            self.pair.finish(CloseReason.DONE if self.pair.both_ended() else CloseReason.CLOSED)
        elif isinstance(exc, _RESETS):
            self.pair.finish(CloseReason.CLIENT_RESET if self is self.pair.client
                             else CloseReason.UPSTREAM_RESET)
        else:
            self.pair.finish(CloseReason.ERROR)


class Upstream(Side):
    """The dialled side: it reads nothing until it is paired."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport = cast(asyncio.Transport, transport)
        self.transport.pause_reading()


class Pair:
    """A client side and an upstream side relayed both ways; `done` is called
    once, with the bytes each way and why the tunnel ended."""

    __slots__ = ("activity", "client", "done", "idle_timeout", "loop", "reason", "timer",
                 "upstream")

    def __init__(self, loop: asyncio.AbstractEventLoop, client: Side, upstream: Side,
                 idle_timeout: float,
                 done: Callable[[int, int, CloseReason], None]) -> None:
        self.loop = loop
        self.client, self.upstream = client, upstream
        client.other, upstream.other = upstream, client
        client.pair = upstream.pair = self
        self.idle_timeout = idle_timeout
        self.done = done
        self.reason: CloseReason | None = None
        self.activity = -1
        self.timer: asyncio.TimerHandle | None = None

    def start(self, initial_up: bytes) -> None:
        """Send `initial_up` upstream and start reading both sides."""
        assert self.client.transport is not None and self.upstream.transport is not None
        if initial_up:
            self.client.nbytes += len(initial_up)
            self.upstream.transport.write(initial_up)
        if 0 < self.idle_timeout < float("inf"):
            self.timer = self.loop.call_later(self.idle_timeout, self._check_idle)
        self.client.transport.resume_reading()
        self.upstream.transport.resume_reading()

    def _check_idle(self) -> None:
        # The hot path stamps nothing: the byte counts moving since the last
        # look is activity, so a tunnel idles out after one to two timeouts.
        moved = self.client.nbytes + self.upstream.nbytes
        if moved == self.activity:
            self.timer = None
            self.finish(CloseReason.IDLE_TIMEOUT)
        else:
            self.activity = moved
            self.timer = self.loop.call_later(self.idle_timeout, self._check_idle)

    def both_ended(self) -> bool:
        return self.client.eof and self.upstream.eof

    def side_ended(self) -> None:
        if self.both_ended():
            self.finish(CloseReason.DONE)

    def finish(self, reason: CloseReason) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for side in (self.client, self.upstream):
            transport = side.transport
            if transport is None:
                continue
            if reason in (CloseReason.CLIENT_RESET, CloseReason.UPSTREAM_RESET, CloseReason.ERROR):
                transport.abort()
            else:
                transport.close()  # sends what is still buffered first
        self.done(self.client.nbytes, self.upstream.nbytes, reason)
