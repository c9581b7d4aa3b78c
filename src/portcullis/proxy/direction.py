"""One way of a relayed tunnel, driven by readiness callbacks.

A direction reads its source while nothing it has read is unwritten, and
waits for its destination to become writable otherwise (the backpressure of
relay.py). At EOF, once everything is written, it passes the half-close on.
The bytes move on the splice path (splicing.py) or the copy path (copying.py).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from portcullis.basics.vocabulary import CloseReason
from portcullis.proxy.pipes import release_pipe
from portcullis.proxy.splicing import SplicePath

if TYPE_CHECKING:
    from portcullis.proxy.tunnel import Tunnel


class Direction(SplicePath):
    """One way of the tunnel: read `src`, write `dst`."""

    __slots__ = ("finished", "loop", "reading", "writing")

    def __init__(
        self, tunnel: Tunnel, src: socket.socket, dst: socket.socket, splice: bool
    ) -> None:
        self.tunnel = tunnel
        self.loop = tunnel.loop
        self.src = src
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.splice = splice
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
            self.loop.remove_reader(self.src_fd)
            self.reading = False

    def _stop_writing(self) -> None:
        if self.writing:
            self.loop.remove_writer(self.dst_fd)
            self.writing = False

    def _resume_reading(self) -> None:
        self._stop_writing()
        if not self.reading:
            self.loop.add_reader(self.src_fd, self.on_readable)
            self.reading = True

    def _wait_writable(self) -> None:
        self._stop_reading()
        if not self.writing:
            self.loop.add_writer(self.dst_fd, self.on_writable)
            self.writing = True

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
        if self.tunnel.reason is not None:
            # uvloop may still run a callback collected in the same poll round
            # in which the other direction ended the tunnel.
            return
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

    def on_writable(self) -> None:
        if self.tunnel.reason is not None:
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
        if self.reading:
            self.loop.remove_reader(self.src_fd)
            self.reading = False
        if self.writing:
            self.loop.remove_writer(self.dst_fd)
            self.writing = False
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.tunnel.fail(self.dst, exc)
            return
        self.finished = True
        self.tunnel.direction_finished()
