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
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
import sys
from dataclasses import dataclass

from portcullis.basics.vocabulary import CloseReason
from portcullis.proxy.pipes import Pipe, acquire_pipe, copy_buffer, release_pipe

# Process-wide switch; relay(use_splice=...) overrides it per call (tests cover both).
USE_SPLICE: bool = sys.platform == "linux" and hasattr(os, "splice")

# Fallback read size; one buffer per thread, never per tunnel.
COPY_CHUNK = 256 * 1024
# Chunks moved per readiness callback before yielding to other tunnels.
_BURST = 8
# splice() answers these when a file type does not support it: fall back to copying.
_SPLICE_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP})
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)

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


@dataclass(slots=True)
class RelayResult:
    # Bytes handed to the destination socket (so initial_up counts once sent).
    bytes_up: int
    bytes_down: int
    close_reason: CloseReason


class _Direction:
    """One way of the tunnel: read `src`, write `dst`."""

    __slots__ = ("buf", "dst", "dst_fd", "eof", "finished", "in_pipe", "loop", "nbytes",
                 "pending", "pipe", "reading", "splice", "src", "src_fd", "tunnel", "writing")

    def __init__(
        self, tunnel: _Tunnel, src: socket.socket, dst: socket.socket, splice: bool
    ) -> None:
        self.tunnel = tunnel
        self.loop = tunnel.loop
        self.src = src
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.splice = splice
        self.pipe: Pipe | None = None
        self.in_pipe = 0  # bytes sitting in self.pipe
        self.pending: memoryview | None = None  # bytes read but not yet written
        self.buf: memoryview | None = None
        self.nbytes = 0
        self.eof = False  # src said EOF
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

    def _resume_reading(self) -> None:
        if self.writing:
            self.loop.remove_writer(self.dst_fd)
            self.writing = False
        if not self.reading:
            self.loop.add_reader(self.src_fd, self.on_readable)
            self.reading = True

    def _wait_writable(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.src_fd)
            self.reading = False
        if not self.writing:
            self.loop.add_writer(self.dst_fd, self.on_writable)
            self.writing = True

    def stop(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.src_fd)
            self.reading = False
        if self.writing:
            self.loop.remove_writer(self.dst_fd)
            self.writing = False
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

    # -- moving bytes -------------------------------------------------------

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
        for _ in range(_BURST):
            try:
                n = os.splice(self.src_fd, pipe.w, pipe.size, flags=_SPLICE_FLAGS)
            except BlockingIOError:
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
            # Short read: the socket is very likely empty; the level-triggered
            # readiness will call again if not, so skip the EAGAIN round trip.
            if n < pipe.size:
                break
        self._give_back_pipe()
        return True

    def _flush_pipe(self) -> bool | None:
        pipe = self.pipe
        assert pipe is not None
        while self.in_pipe:
            try:
                m = os.splice(pipe.r, self.dst_fd, self.in_pipe, flags=_SPLICE_FLAGS)
            except BlockingIOError:
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

    def _pump_copy(self) -> bool | None:
        buf = self.buf
        if buf is None:
            buf = self.buf = copy_buffer(COPY_CHUNK)
        size = len(buf)
        recv_into = self.src.recv_into
        send = self.dst.send
        for _ in range(_BURST):
            try:
                n = recv_into(buf)
            except BlockingIOError:
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
                m = 0
            except OSError as exc:
                self.tunnel.fail(self.dst, exc)
                return None
            self.nbytes += m
            if m < n:
                # The shared buffer is reused by every tunnel: keep a private copy.
                self.pending = memoryview(buf[m:n].tobytes())
                return False
            if n < size:
                break
        return True

    def _flush_pending(self) -> bool | None:
        pending = self.pending
        while pending is not None:
            try:
                m = self.dst.send(pending)
            except BlockingIOError:
                self.pending = pending
                return False
            except OSError as exc:
                self.tunnel.fail(self.dst, exc)
                return None
            self.nbytes += m
            pending = pending[m:] if m < len(pending) else None
        self.pending = None
        return True

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


class _Tunnel:
    __slots__ = ("client", "down", "future", "idle_timeout", "last_activity", "loop", "reason",
                 "timer", "up", "upstream")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: socket.socket,
        upstream: socket.socket,
        initial_up: bytes,
        idle_timeout: float,
        splice: bool,
    ) -> None:
        self.loop = loop
        self.client = client
        self.upstream = upstream
        self.future: asyncio.Future[CloseReason] = loop.create_future()
        self.reason: CloseReason | None = None
        self.idle_timeout = idle_timeout
        self.last_activity = loop.time()
        self.timer: asyncio.TimerHandle | None = None
        self.up = _Direction(self, client, upstream, splice)
        self.down = _Direction(self, upstream, client, splice)
        if initial_up:
            self.up.pending = memoryview(initial_up)

    def start(self) -> None:
        if 0 < self.idle_timeout < float("inf"):
            self.timer = self.loop.call_later(self.idle_timeout, self._check_idle)
        self.up.start()
        if self.reason is None:
            self.down.start()

    def _check_idle(self) -> None:
        # One timer per tunnel, pushed back lazily: the hot path only stamps
        # last_activity, and the timer re-arms for the remaining time when it
        # finds the tunnel was busy.
        idle = self.loop.time() - self.last_activity
        remaining = self.idle_timeout - idle
        if remaining <= 0.001:
            self.timer = None
            self.finish(CloseReason.IDLE_TIMEOUT)
        else:
            self.timer = self.loop.call_later(remaining, self._check_idle)

    def direction_finished(self) -> None:
        if self.up.finished and self.down.finished:
            self.finish(CloseReason.DONE)

    def fail(self, sock: socket.socket, exc: OSError) -> None:
        if exc.errno in _RESET_ERRNOS:
            reset = CloseReason.CLIENT_RESET if sock is self.client else CloseReason.UPSTREAM_RESET
            self.finish(reset)
        else:
            self.finish(CloseReason.ERROR)

    def finish(self, reason: CloseReason) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.up.stop()
        self.down.stop()
        if not self.future.done():
            self.future.set_result(reason)

    def close(self) -> None:
        # A reset on one side is passed on as a reset, so the other peer does
        # not mistake a cut-off stream for a complete one.
        if self.reason is CloseReason.CLIENT_RESET:
            _set_linger_reset(self.upstream)
        elif self.reason is CloseReason.UPSTREAM_RESET:
            _set_linger_reset(self.client)
        self.client.close()
        self.upstream.close()


def _set_linger_reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


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
    tunnel: _Tunnel | None = None
    try:
        client.setblocking(False)
        upstream.setblocking(False)
        tunnel = _Tunnel(loop, client, upstream, initial_up, idle_timeout, splice)
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
    tunnel.close()
    return RelayResult(tunnel.up.nbytes, tunnel.down.nbytes, reason)
