"""The bookkeeping of one relayed connection: its two directions, the idle
timer, how it ends, and closing both sockets so that a reset stays a reset."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct

from portcullis.basics.vocabulary import CloseReason
from portcullis.proxy.deadlines import deadlines_for
from portcullis.proxy.direction import Direction
from portcullis.proxy.reactor import reactor_for

# The peer went away; anything else from the kernel is an "error".
_RESET_ERRNOS = frozenset(
    {
        errno.ECONNRESET,
        errno.EPIPE,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.ENOTCONN,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
    }
)
_LINGER_RESET = struct.pack("ii", 1, 0)
# Looked up once: under Python 3.11 `CloseReason.DONE` in a method is found
# through EnumType's __getattr__ hook at every call (engine.CompiledRule.allows).
_DONE = CloseReason.DONE


class Tunnel:
    """A client socket and an upstream socket relayed both ways, until `future`
    says why it ended."""

    __slots__ = ("client", "deadlines", "down", "future", "idle_slot", "idle_timeout",
                 "last_activity", "loop", "reason", "reset_to", "up", "upstream")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: socket.socket,
        upstream: socket.socket,
        initial_up: bytes,
        idle_timeout: float,
        splice_after: float,
    ) -> None:
        self.loop = loop
        self.client = client
        self.upstream = upstream
        self.future: asyncio.Future[CloseReason] = loop.create_future()
        self.reason: CloseReason | None = None
        # The socket a peer's reset is passed on to, when the tunnel ended by one.
        self.reset_to: socket.socket | None = None
        self.idle_timeout = idle_timeout
        self.last_activity = loop.time()
        self.deadlines = deadlines_for(loop)
        self.idle_slot: int | None = None
        reactor = reactor_for(loop)
        client_watch, upstream_watch = reactor.watch(client), reactor.watch(upstream)
        self.up = Direction(self, client, upstream, client_watch, upstream_watch, splice_after)
        self.down = Direction(self, upstream, client, upstream_watch, client_watch, splice_after)
        if initial_up:
            self.up.pending = memoryview(initial_up)

    def start(self) -> None:
        if 0 < self.idle_timeout < float("inf"):
            self.idle_slot = self.deadlines.add(self.loop.time() + self.idle_timeout, self,
                                                Tunnel._check_idle)
        self.up.start()
        if self.reason is None:
            self.down.start()

    def _check_idle(self) -> None:
        # One deadline per tunnel, pushed back lazily: the hot path only stamps
        # last_activity, and the deadline is set again for the remaining time
        # when it finds the tunnel was busy.
        self.idle_slot = None
        if self.reason is not None:
            return
        now = self.loop.time()
        remaining = self.idle_timeout - (now - self.last_activity)
        if remaining <= 0.001:
            self.finish(CloseReason.IDLE_TIMEOUT)
        else:
            self.idle_slot = self.deadlines.add(now + remaining, self, Tunnel._check_idle)

    def direction_finished(self) -> None:
        if self.up.finished and self.down.finished:
            self.finish(_DONE)

    def fail(self, sock: socket.socket, exc: OSError) -> None:
        if exc.errno in _RESET_ERRNOS:
            by_client = sock is self.client
            if self.reason is None:
                self.reset_to = self.upstream if by_client else self.client
            self.finish(CloseReason.CLIENT_RESET if by_client else CloseReason.UPSTREAM_RESET)
        else:
            self.finish(CloseReason.ERROR)

    def finish(self, reason: CloseReason) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        if self.idle_slot is not None:
            self.deadlines.cancel(self.idle_slot, self)
            self.idle_slot = None
        self.up.stop()
        self.down.stop()
        if not self.future.done():
            self.future.set_result(reason)

    def close(self) -> tuple[int, int]:
        """Close both sockets (after `finish`); the bytes written up and down."""
        # A reset on one side is passed on as a reset, so the other peer does
        # not mistake a cut-off stream for a complete one.
        if self.reset_to is not None:
            _set_linger_reset(self.reset_to)
        self.client.close()
        self.upstream.close()
        up, down = self.up, self.down
        # Each direction points back at the tunnel: without this cycle the
        # tunnel, its directions, watches, sockets and future are freed by
        # reference counting now, not found by the collector later (about four
        # objects of every connection were, bench/findings.md, tenth part).
        del self.up, self.down
        return up.nbytes, down.nbytes


def _set_linger_reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
