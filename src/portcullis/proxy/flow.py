"""The start of every tunnel: both sockets as event-loop transports.

Most tunnels are short (a TLS handshake, a manifest, a token): for them the
loop's own transports are the cheapest relay there is, one protocol callback
and one write per chunk, and one registration per socket for the tunnel's life
(a uvloop poll handle per reader costs about seven syscalls to set up and tear
down: bench/RESULTS.md). Once a tunnel has carried SPLICE_AFTER bytes, it is
a download worth the pipes: the flow pauses both transports, waits until
neither holds unwritten bytes, duplicates the two fds and hands them to the
splice relay (tunnel.py), then closes the transports' own fds. Nothing is in
flight during the hand-over but what the kernel holds.

Ends are those of tunnel.py: EOF is passed on as a half-close once what came
before it is written (DONE when both ways are), a reset is passed on as a
reset, and the idle timer, a cancellation or an error abort both sides.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import cast

from portcullis.basics.vocabulary import CloseReason
from portcullis.proxy.tunnel import Tunnel, close_reason_of, set_linger_reset

# Bytes both ways after which a tunnel moves to splice(2); a pipe pair from the
# pool and the hand-over cost about what 256 KiB of copying does.
SPLICE_AFTER = 256 * 1024


class Side(asyncio.Protocol):
    """One socket of the tunnel: what it reads is written to the other side."""

    __slots__ = ("early", "eof", "flow", "is_client", "lost", "peer", "sent", "transport")

    def __init__(self, flow: Flow, is_client: bool) -> None:
        self.flow = flow
        self.is_client = is_client
        self.transport: asyncio.Transport | None = None
        self.peer: Side | None = None
        self.sent = 0  # bytes given to this side's transport to write
        self.eof = False  # this side's reader said EOF
        self.lost = False
        self.early = b""  # read before the other side's transport was up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        flow = self.flow
        if not flow.ready:
            self.early += data
            return
        self.forward(data)
        if flow.carried >= SPLICE_AFTER and flow.splice:
            flow.hand_over()

    def forward(self, data: bytes) -> None:
        flow = self.flow
        peer = self.peer
        assert peer is not None and peer.transport is not None
        peer.transport.write(data)
        peer.sent += len(data)
        flow.last_activity = flow.loop.time()
        flow.carried += len(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        assert peer is not None
        if self.flow.ready and peer.transport is not None and self.flow.reason is None:
            self.pass_eof(peer.transport)
        return True  # keep writing the other way

    def pass_eof(self, peer: asyncio.Transport) -> None:
        # The transport shuts the peer's write side once its buffer is out; a
        # low-water mark of 0 makes it say when that is (resume_writing).
        peer.write_eof()
        if peer.get_write_buffer_size():
            peer.set_write_buffer_limits(0, 0)
        self.flow.check_done()

    # Our write buffer is over its mark: stop reading the side that fills it.
    def pause_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        flow = self.flow
        if flow.handing_over:
            flow.hand_over()
        elif self.peer is not None and self.peer.transport is not None and not self.peer.eof:
            self.peer.transport.resume_reading()
        flow.check_done()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        flow = self.flow
        if exc is not None:
            flow.finish(close_reason_of(exc, self.is_client))
        elif flow.reason is None and flow.tunnel is None:
            flow.finish(CloseReason.ERROR)  # closed under us: not by this flow
        flow.check_lost()


class Flow:
    """A tunnel on transports until it ends (`future` says why) or is handed
    to the splice relay (`future` says None, `tunnel` is running)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, idle_timeout: float, splice: bool
                 ) -> None:
        self.loop = loop
        self.idle_timeout = idle_timeout
        self.splice = splice
        self.client = Side(self, True)
        self.upstream = Side(self, False)
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.future: asyncio.Future[CloseReason | None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()  # both transports gone
        self.reason: CloseReason | None = None
        self.tunnel: Tunnel | None = None
        self.handing_over = False
        self.ready = False  # both transports are up: bytes may go through
        self.carried = 0
        self.last_activity = loop.time()
        self.timer: asyncio.TimerHandle | None = None
        self.sockets: tuple[socket.socket, socket.socket] | None = None
        self.final = (0, 0)  # nbytes() when the flow ended or handed over

    async def start(self, client: socket.socket, upstream: socket.socket, initial_up: bytes
                    ) -> None:
        """Make both transports; the sockets are theirs from here on."""
        self.sockets = (client, upstream)
        loop = self.loop
        await loop.connect_accepted_socket(lambda: self.client, client)
        await loop.create_connection(lambda: self.upstream, sock=upstream)
        # In order: the peeked bytes, then whatever came while the other
        # transport was being made, then an EOF that came with it.
        self.ready = True
        client_early, upstream_early = self.client.early, self.upstream.early
        self.client.early = self.upstream.early = b""
        for side, data in ((self.client, initial_up + client_early),
                           (self.upstream, upstream_early)):
            if data:
                side.forward(data)
        for side in (self.client, self.upstream):
            peer = side.peer
            assert peer is not None and peer.transport is not None
            if side.eof and self.reason is None:
                side.pass_eof(peer.transport)
        if self.carried >= SPLICE_AFTER and self.splice:
            self.hand_over()
        if 0 < self.idle_timeout < float("inf"):
            self.timer = loop.call_later(self.idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        # One timer, pushed back lazily: the hot path only stamps last_activity.
        remaining = self.idle_timeout - (self.loop.time() - self.last_activity)
        if remaining <= 0.001:
            self.timer = None
            self.finish(CloseReason.IDLE_TIMEOUT)
        else:
            self.timer = self.loop.call_later(remaining, self._check_idle)

    def nbytes(self) -> tuple[int, int]:
        """Bytes written each way (up, down): given to a transport, less what it still holds."""
        return (self._written(self.upstream), self._written(self.client))

    @staticmethod
    def _written(side: Side) -> int:
        tr = side.transport
        return side.sent - (tr.get_write_buffer_size() if tr is not None and not side.lost else 0)

    def check_done(self) -> None:
        client, upstream = self.client, self.upstream
        if (self.reason is None and client.eof and upstream.eof
                and not self._held(client) and not self._held(upstream)):
            self.finish(CloseReason.DONE)

    @staticmethod
    def _held(side: Side) -> int:
        return side.transport.get_write_buffer_size() if side.transport is not None else 0

    def finish(self, reason: CloseReason) -> None:
        """End the tunnel: pass a reset on as a reset, close or abort both transports."""
        if self.reason is not None or self.tunnel is not None:
            return
        self.reason = reason
        self.final = self.nbytes()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.future.done():
            self.future.set_result(reason)
        for side in (self.client, self.upstream):
            tr = side.transport
            if tr is None or side.lost:
                continue
            victim = (reason is CloseReason.CLIENT_RESET and not side.is_client) or (
                reason is CloseReason.UPSTREAM_RESET and side.is_client)
            if victim:
                sock = tr.get_extra_info("socket")
                if sock is not None:
                    set_linger_reset(sock)
            if reason is CloseReason.DONE:
                tr.close()
            else:
                tr.abort()
        self.check_lost()

    def check_lost(self) -> None:
        # Sides whose transport never came up count as gone.
        if all(s.lost or s.transport is None for s in (self.client, self.upstream)) and (
                self.reason is not None or self.tunnel is not None) and not self.closed.done():
            self.closed.set_result(None)

    # -- the hand-over to splice ------------------------------------------------

    def hand_over(self) -> None:
        """Move the tunnel to splice once neither transport holds unwritten bytes."""
        client, upstream = self.client, self.upstream
        if self.tunnel is not None:
            return
        if self.reason is not None or client.eof or upstream.eof or self.sockets is None:
            self.splice = False  # a half-closed tunnel stays where it is
            return
        ctr, utr = client.transport, upstream.transport
        assert ctr is not None and utr is not None
        if not self.handing_over:
            self.handing_over = True
            ctr.pause_reading()
            utr.pause_reading()
            for tr in (ctr, utr):
                if tr.get_write_buffer_size():
                    tr.set_write_buffer_limits(0, 0)  # resume_writing when empty
        if ctr.get_write_buffer_size() or utr.get_write_buffer_size():
            return
        try:
            fds = [os.dup(cast(int, tr.get_extra_info("socket").fileno())) for tr in (ctr, utr)]
        except OSError:
            # Out of fds: the transports go on copying; nothing was moved yet.
            self.handing_over = self.splice = False
            for tr in (ctr, utr):
                tr.set_write_buffer_limits()
                tr.resume_reading()
            return
        pair = [socket.socket(s.family, s.type, s.proto, fileno=fd)
                for s, fd in zip(self.sockets, fds, strict=True)]
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.final = self.nbytes()
        self.tunnel = Tunnel(self.loop, pair[0], pair[1], b"", self.idle_timeout, True)
        self.handing_over = False
        # The duplicates keep the connections open while the transports close their fds.
        ctr.abort()
        utr.abort()
        self.future.set_result(None)
        self.tunnel.start()
