"""The splice path of a relayed direction: socket -> pipe -> socket in the kernel.

The bytes never reach Python objects, which is what keeps proxy CPU per GiB
low. A direction holds a pipe from the pool (pipes.py) only while bytes are in
it. Where splice turns out not to work, the direction switches to the copy
path for good, keeping what is already in the pipe.
"""

from __future__ import annotations

import errno
import math
import os

from portcullis.proxy.copying import BURST, CopyPath
from portcullis.proxy.pipes import Pipe, acquire_pipe, release_pipe

# splice() answers these when a file type does not support it: fall back to copying.
_SPLICE_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP})
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
# A direction copies its first SPLICE_AFTER bytes and splices the rest. A TLS
# handshake or a small answer costs the same syscalls either way (recv, send,
# recv to EAGAIN against splice in, out, in to EAGAIN), and the copy path's
# Python is shorter (no pipe from the pool); a bulk transfer still moves all
# but its first 64 KiB in the kernel (bench/findings.md).
SPLICE_AFTER = 64 * 1024


class SplicePath(CopyPath):
    """Moving one direction's bytes with os.splice, falling back to CopyPath."""

    __slots__ = ("in_pipe", "pipe", "splice")

    pipe: Pipe | None
    in_pipe: int  # bytes sitting in self.pipe
    splice: bool  # on the splice path now

    def _pump_splice(self) -> bool | None:
        """Source -> pipe -> destination until the source runs dry.

        True: everything read was written; False: the destination is full;
        None: the tunnel was closed.
        """
        pipe = self.pipe
        if pipe is None:
            try:
                pipe = self.pipe = acquire_pipe()
            except OSError:
                # Out of fds (EMFILE/ENFILE): this tunnel can still move bytes by copying.
                return self._pump_copy()
        for _ in range(BURST):
            try:
                n = os.splice(self.src_fd, pipe.w, pipe.size, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                self.src_watch.readable = 0
                break
            except OSError as exc:
                if exc.errno in _SPLICE_UNSUPPORTED:
                    self._to_copy_mode()
                    return self._pump_copy()
                self.tunnel.fail(self.src, exc)
                return None
            if n == 0:
                self.eof = True
                break
            self.in_pipe += n
            drained = self._flush_pipe()
            if not drained or not self.splice:
                return drained
            # A short read is not taken as "empty": read on until EAGAIN. The
            # readiness events are edge-triggered (reactor.py): bytes, an EOF or
            # a reset left behind a short read would never be reported again.
        self._give_back_pipe()
        return True

    def _flush_pipe(self) -> bool | None:
        pipe = self.pipe
        assert pipe is not None
        while self.in_pipe:
            try:
                m = os.splice(pipe.r, self.dst_fd, self.in_pipe, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                self.dst_watch.writable = False
                return False
            except OSError as exc:
                if exc.errno in _SPLICE_UNSUPPORTED:
                    self._to_copy_mode()
                    return self._flush_pending()
                self.tunnel.fail(self.dst, exc)
                return None
            self.in_pipe -= m
            self.nbytes += m
        return True

    def _give_back_pipe(self) -> None:
        pipe = self.pipe
        if pipe is not None and self.in_pipe == 0:
            self.pipe = None
            release_pipe(pipe, reusable=True)

    def _to_copy_mode(self) -> None:
        """splice refused these sockets: keep what is in the pipe, go on with recv/send."""
        self.splice = False
        self.splice_after = math.inf
        pipe, self.pipe = self.pipe, None
        if pipe is None:
            return
        if self.in_pipe:
            chunks = [self.pending.tobytes()] if self.pending is not None else []
            while self.in_pipe:
                chunk = os.read(pipe.r, self.in_pipe)
                self.in_pipe -= len(chunk)
                chunks.append(chunk)
            self.pending = memoryview(b"".join(chunks))
        release_pipe(pipe, reusable=True)
