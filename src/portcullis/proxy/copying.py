"""The copy path of a relayed direction: recv_into a buffer, then send.

Used where splice is not: off Linux, on sockets splice refuses, and when no
pipe can be had (out of fds). The buffer is shared by the tunnels of a thread;
a direction keeps a private copy only of bytes its destination has not taken.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from portcullis.proxy.pipes import copy_buffer
from portcullis.proxy.reactor import ENDS

if TYPE_CHECKING:
    from portcullis.proxy.reactor import Watch
    from portcullis.proxy.tunnel import Tunnel

# Fallback read size; one buffer per thread, never per tunnel.
COPY_CHUNK = 256 * 1024
# Chunks moved per readiness callback before yielding to other tunnels.
BURST = 8


class CopyPath:
    """Moving one direction's bytes through user space.

    Holds the state every path shares; Direction.__init__ (direction.py) sets
    it, so that making a direction stays one call.
    """

    __slots__ = ("buf", "dst", "dst_fd", "dst_watch", "eof", "nbytes", "pending", "splice_after",
                 "src", "src_fd", "src_watch", "tunnel")

    tunnel: Tunnel
    src: socket.socket
    dst: socket.socket
    src_fd: int
    dst_fd: int
    src_watch: Watch  # readiness: cleared here on EAGAIN (reactor.py)
    dst_watch: Watch
    pending: memoryview | None  # bytes read but not yet written
    buf: memoryview | None
    nbytes: int  # bytes written to dst
    splice_after: float  # bytes written before the splice path takes over (inf: never)
    eof: bool  # src said EOF

    def _pump_copy(self) -> bool | None:
        buf = self.buf
        if buf is None:
            buf = self.buf = copy_buffer(COPY_CHUNK)
        recv_into = self.src.recv_into
        send = self.dst.send
        size = len(buf)
        for _ in range(BURST):
            try:
                n = recv_into(buf)
            except BlockingIOError:
                self.src_watch.readable = 0
                break
            except OSError as exc:
                self.tunnel.fail(self.src, exc)
                return None
            if n == 0:
                self.eof = True
                break
            try:
                m = send(buf[:n])
            except BlockingIOError:
                self.dst_watch.writable = False
                m = 0
            except OSError as exc:
                self.tunnel.fail(self.dst, exc)
                return None
            self.nbytes += m
            if m < n:
                # The shared buffer is reused by every tunnel: keep a private copy.
                self.pending = memoryview(buf[m:n].tobytes())
                return False
            if self.nbytes >= self.splice_after:
                break  # the splice path takes over at the next call (direction.py)
            if n < size and not self.src_watch.readable & ENDS:
                # The read took all there was: what comes after it is a new
                # event (reactor.py). Saves a read and its EAGAIN exception
                # per event; an end or a reset that came with the event is
                # read on to (docs/decisions.md, "The relay reads on to EAGAIN").
                self.src_watch.readable = 0
                break
        return True

    def _flush_pending(self) -> bool | None:
        pending = self.pending
        while pending is not None:
            try:
                m = self.dst.send(pending)
            except BlockingIOError:
                self.dst_watch.writable = False
                self.pending = pending
                return False
            except OSError as exc:
                self.tunnel.fail(self.dst, exc)
                return None
            self.nbytes += m
            pending = pending[m:] if m < len(pending) else None
        self.pending = None
        return True
