"""One way of a relayed tunnel, driven by readiness callbacks.

A direction reads its source while nothing it has read is unwritten, and
waits for its destination to become writable otherwise (the backpressure of
relay.py). At EOF, once everything is written, it passes the half-close on.
The bytes move on the splice path (splicing.py) or the copy path (copying.py).

Readiness comes from the proxy's edge-triggered epoll (reactor.py): starting
or stopping to read is setting a callback slot, no syscall. A read goes on
until EAGAIN, which clears the source's `readable`; when the burst ends first,
the direction calls itself again on the next loop turn.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from portcullis.basics.vocabulary import CloseReason
from portcullis.proxy.pipes import release_pipe
from portcullis.proxy.splicing import SplicePath

if TYPE_CHECKING:
    from portcullis.proxy.reactor import Watch
    from portcullis.proxy.tunnel import Tunnel


class Direction(SplicePath):
    """One way of the tunnel: read `src`, write `dst`."""

    __slots__ = ("finished", "loop", "reading", "writing")

    def __init__(
        self, tunnel: Tunnel, src: socket.socket, dst: socket.socket, src_watch: Watch,
        dst_watch: Watch, splice_after: float,
    ) -> None:
        self.tunnel = tunnel
        self.loop = tunnel.loop
        self.src = src
        self.dst = dst
        self.src_watch = src_watch
        self.dst_watch = dst_watch
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.splice = False
        self.splice_after = splice_after
        self.pipe = None
        self.in_pipe = 0
        self.pending = None
        self.buf = None
        self.nbytes = 0
        self.eof = False
        self.finished = False  # EOF passed on to dst
        self.reading = False
        self.writing = False

    # -- registration -------------------------------------------------------

    def start(self) -> None:
        drained = self._flush()
        if drained:
            self._resume_reading()
        elif drained is not None:
            self._wait_writable()

    def _stop_reading(self) -> None:
        if self.reading:
            self.src_watch.on_read = None
            self.reading = False

    def _stop_writing(self) -> None:
        if self.writing:
            self.dst_watch.on_write = None
            self.writing = False

    def _resume_reading(self) -> None:
        if self.writing:  # tested here: usually not, and a call costs more
            self._stop_writing()
        if not self.reading:
            watch = self.src_watch
            watch.on_read = self.on_readable
            self.reading = True
            if watch.muted:
                watch.unmute_reads()
            if watch.readable:
                # Bytes (or the end) came while this direction was not reading:
                # no new event will tell.
                self.loop.call_soon(self.on_readable)

    def _wait_writable(self) -> None:
        # Called after a write answered EAGAIN (which cleared `writable`).
        self._stop_reading()
        self.src_watch.mute_reads()
        if not self.writing:
            watch = self.dst_watch
            watch.on_write = self.on_writable
            self.writing = True
            try:
                watch.want_writes()  # if the other direction muted it, no writer then
            except OSError as exc:
                self.tunnel.fail(self.dst, exc)

    def stop(self) -> None:
        self._stop_reading()
        self._stop_writing()
        pipe, self.pipe = self.pipe, None
        if pipe is not None:
            # A pipe with bytes still in it cannot be reused by another tunnel.
            release_pipe(pipe, reusable=self.in_pipe == 0)
            self.in_pipe = 0
        self.pending = None

    # -- callbacks ----------------------------------------------------------

    def on_readable(self) -> None:
        if self.tunnel.reason is not None or not self.reading:
            # A call scheduled before the tunnel ended, or before the
            # direction turned to waiting for its destination.
            return
        if self.nbytes >= self.splice_after and not self.splice:
            self.splice = True  # nothing is pending while a direction reads
        try:
            drained = self._pump_splice() if self.splice else self._pump_copy()
        except Exception:
            # A bug, not the network: end the tunnel rather than leave it hanging.
            self.tunnel.finish(CloseReason.ERROR)
            raise
        self.tunnel.last_activity = self.loop.time()
        if drained is None:  # the tunnel is over
            return
        if not drained:
            self._wait_writable()
        elif self.eof:
            self._end()
        elif self.src_watch.readable:
            # The burst ended before EAGAIN: go on after the other callbacks.
            self.loop.call_soon(self.on_readable)

    def on_writable(self) -> None:
        if self.tunnel.reason is not None or not self.writing:
            return
        try:
            drained = self._flush()
        except Exception:
            self.tunnel.finish(CloseReason.ERROR)
            raise
        self.tunnel.last_activity = self.loop.time()
        if drained is None or not drained:
            return
        if self.eof:
            self._end()
        else:
            self._resume_reading()

    # -- draining and ending ----------------------------------------------

    def _flush(self) -> bool | None:
        drained = self._flush_pending()
        if drained and self.pipe is not None:
            drained = self._flush_pipe()
            if drained:
                self._give_back_pipe()
        return drained

    def _end(self) -> None:
        """Source at EOF and everything written: pass the half-close on."""
        self._stop_reading()
        self._stop_writing()
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.tunnel.fail(self.dst, exc)
            return
        self.finished = True
        self.tunnel.direction_finished()
