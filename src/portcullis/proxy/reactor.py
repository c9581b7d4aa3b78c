"""Readiness of the proxy's own sockets: one epoll of ours, edge-triggered, one
registration per socket for its whole life.

The loop's own add_reader/add_writer make a libuv poll handle per wait under
uvloop: set-up probes the fd (epoll ADD and DEL) and sets FIONBIO, tear-down
deletes it again, and each call looks the fd up in uvloop's transports (a
Python WeakValueDictionary raising KeyError). A connection's four or five waits
(the head or the hello, the dial, the relay's two readers) cost about twenty
syscalls that way (bench/RESULTS.md). Here a socket is added to our epoll
once, with EPOLLET for both directions, and a close removes it; the loop
watches the one epoll fd and `_dispatch` hands out what it reports.

Edge-triggered means an event says "something changed", not "there is data":
`Watch.readable` (or `writable`) stays set from an event until a read (or
write) of the socket's owner fails with EAGAIN, which the owner records (or
an unmute, whose own event says it again). A read that returns less than it
asked for also took everything there was, unless the event said the peer's
end or an error came too (`ENDS` in `readable`): a byte, an end or a reset
that arrives after the event is a new event. A wait that starts right after
such an EAGAIN clears the flag and waits for the next event; the relay reads
on until the socket is empty, and re-schedules itself when its burst ends
first. Edge-triggered also means every segment that arrives is an event,
wanted or not: a relay direction whose destination is full mutes its
source's read events (`Watch.mute_reads`, one epoll_ctl) until it reads again,
or a bulk tunnel wakes the loop four times as often (bench/findings.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
from collections.abc import Callable

from portcullis.proxy.per_loop import PerLoop

_READ_EVENTS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_WRITE_EVENTS = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
# In a read event's mask: the peer's end or an error came with (or before) it.
ENDS = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_MASK = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
# Muted: no read events, and write events only while a writer waits (a modify
# reports the socket's state at once, and an idle writable socket would wake
# the loop for nothing at every mute).
_MUTED = select.EPOLLET
_MUTED_WRITES = select.EPOLLET | select.EPOLLOUT


class Watch:
    """One socket's readiness, and who is waiting for it (at most one per direction)."""

    __slots__ = ("epoll", "fd", "muted", "on_read", "on_write", "readable", "sock", "writable",
                 "writes_muted")

    def __init__(self, sock: socket.socket, epoll: select.epoll) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.epoll = epoll
        self.muted = False
        self.writes_muted = False  # muted without write events (no writer waited)
        # 0 until the first event: registering reports the socket's state then.
        # Then the mask of the last read event (ENDS in it: the end came too),
        # until a read answers EAGAIN or takes all there was.
        self.readable = 0
        self.writable = False
        self.on_read: Callable[[], object] | None = None
        self.on_write: Callable[[], object] | None = None

    def mute_reads(self) -> None:
        """Stop the read events while the owner cannot read (its destination is
        full): edge-triggered, every segment that arrives would wake the loop.
        Errors and hang-ups are still reported (epoll always reports them)."""
        if not self.muted:
            writes_muted = self.on_write is None
            try:
                self.epoll.modify(self.fd, _MUTED if writes_muted else _MUTED_WRITES)
            except OSError:
                return  # not muted: only more wakeups than needed
            self.muted = True
            self.writes_muted = writes_muted

    def want_writes(self) -> None:
        """Call after setting `on_write` on a muted socket: its write events come
        back (and epoll reports at once if it is writable already). OSError when
        epoll refuses: the caller's wait would never end."""
        if self.writes_muted:
            self.epoll.modify(self.fd, _MUTED_WRITES)
            self.writes_muted = False

    def unmute_reads(self) -> None:
        """Read events again; epoll reports the socket's state at once if it is
        readable (or at its end), so nothing that came meanwhile is missed."""
        if self.muted:
            self.muted = self.writes_muted = False
            try:
                self.epoll.modify(self.fd, _MASK)
            except OSError:
                # No event will say what came meanwhile: the owner reads at once,
                # to EAGAIN or the end, and finds out (a read error ends its tunnel).
                self.readable = _READ_EVENTS
                return
            self.readable = 0


class Reactor:
    """The proxy's epoll for one event loop (`reactor_for`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._epoll = select.epoll()
        # By fd number. A closed socket leaves its entry until the number is
        # reused: `watch` tells the two apart by the socket object.
        self._watches: dict[int, Watch] = {}
        loop.add_reader(self._epoll.fileno(), self._dispatch)

    def watch(self, sock: socket.socket) -> Watch:
        """The socket's Watch, registering the socket on first use."""
        fd = sock.fileno()
        watch = self._watches.get(fd)
        if watch is not None and watch.sock is sock:
            return watch
        watch = self._watches[fd] = Watch(sock, self._epoll)
        try:
            self._epoll.register(fd, _MASK)
        except FileExistsError:
            # The number's previous socket is still open elsewhere (a dup):
            # the registration is the old file's; point it at this one.
            self._epoll.modify(fd, _MASK)
        return watch

    def forget(self, sock: socket.socket) -> None:
        """Stop watching a socket handed to something else (a TLS transport)."""
        fd = sock.fileno()
        watch = self._watches.get(fd)
        if watch is not None and watch.sock is sock:
            del self._watches[fd]
            with contextlib.suppress(OSError):  # closed meanwhile: nothing to remove
                self._epoll.unregister(fd)

    def close(self) -> None:
        self._watches.clear()
        if not self.loop.is_closed():
            self.loop.remove_reader(self._epoll.fileno())
        self._epoll.close()

    def _dispatch(self) -> None:
        try:
            events = self._epoll.poll(0)
        except InterruptedError:
            return
        watches = self._watches
        for fd, mask in events:
            watch = watches.get(fd)
            if watch is None:
                continue
            # The callbacks are called here, not through a helper: this loop
            # runs for every readiness event of every tunnel. One callback's
            # bug must not drop the rest of the batch (an edge-triggered event
            # is not reported twice).
            if mask & _READ_EVENTS:
                watch.readable = mask
                callback = watch.on_read
                if callback is not None:
                    try:
                        callback()
                    except Exception as exc:
                        self._report(exc)
            if mask & _WRITE_EVENTS:
                watch.writable = True
                callback = watch.on_write
                if callback is not None:
                    try:
                        callback()
                    except Exception as exc:
                        self._report(exc)

    def _report(self, exc: Exception) -> None:
        self.loop.call_exception_handler({"message": "readiness callback failed", "exception": exc})


reactor_for: PerLoop[Reactor] = PerLoop(Reactor)
"""The Reactor of a loop (one loop per thread; a new loop gets a new one)."""
