"""Pipes for os.splice and the copy buffer, pooled per thread.

A tunnel direction takes a pipe only while bytes are in flight and gives it
back as soon as it is empty, so an idle tunnel holds no pipe: the pool is the
constant in "2 fds per tunnel plus a constant".
"""

from __future__ import annotations

import fcntl
import os
import threading

# Requested pipe capacity: bigger pipes mean fewer splice calls per GiB. The
# kernel may refuse (per-user pipe page limits); then the default size is kept.
PIPE_SIZE = 1024 * 1024
# Empty pipes kept per thread for reuse: the constant in "2 fds per tunnel + constant".
PIPE_POOL_MAX = 16


class Pipe:
    __slots__ = ("r", "size", "w")

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self.size = fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            self.size = fcntl.fcntl(self.w, fcntl.F_GETPIPE_SZ)

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


class _PerThread(threading.local):
    # Loops run one per thread; callbacks use these only between two awaits,
    # so a per-thread pool and buffer need no locking.
    def __init__(self) -> None:
        self.pipes: list[Pipe] = []
        self.buffer: memoryview | None = None


_local = _PerThread()


def acquire_pipe() -> Pipe:
    pool = _local.pipes
    return pool.pop() if pool else Pipe()


def release_pipe(pipe: Pipe, *, reusable: bool) -> None:
    pool = _local.pipes
    if reusable and len(pool) < PIPE_POOL_MAX:
        pool.append(pipe)
    else:
        pipe.close()


def copy_buffer(size: int) -> memoryview:
    buf = _local.buffer
    if buf is None or len(buf) != size:
        buf = _local.buffer = memoryview(bytearray(size))
    return buf


def close_pipe_pool() -> None:
    """Close this thread's spare pipes (at shutdown, or to count fds exactly in tests)."""
    pool = _local.pipes
    while pool:
        pool.pop().close()
