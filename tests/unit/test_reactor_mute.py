"""Muting a socket's read events (reactor.Watch) on a real epoll and socket pair."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest

from portcullis.proxy.reactor import _MASK, Watch


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket, select.epoll]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    epoll = select.epoll()
    yield ours, theirs, epoll
    epoll.close()
    ours.close()
    theirs.close()


@pytest.fixture
def registered(
    pair: tuple[socket.socket, socket.socket, select.epoll],
) -> tuple[Watch, socket.socket, select.epoll]:
    """Our end registered as the reactor registers a socket, its first event taken."""
    ours, theirs, epoll = pair
    epoll.register(ours.fileno(), _MASK)
    watch = Watch(ours, epoll)
    epoll.poll(0)  # the registration's own event
    return watch, theirs, epoll


def read_events(epoll: select.epoll, fd: int) -> int:
    return sum(1 for f, mask in epoll.poll(0) if f == fd and mask & select.EPOLLIN)


def test_muted_socket_reports_no_reads_and_unmuting_reports_what_came(
    registered: tuple[Watch, socket.socket, select.epoll],
) -> None:
    watch, theirs, epoll = registered
    watch.readable = True  # an event came before the mute
    watch.mute_reads()
    assert watch.muted
    theirs.send(b"x")
    theirs.send(b"y")
    assert read_events(epoll, watch.fd) == 0
    watch.unmute_reads()
    assert not watch.muted
    assert not watch.readable  # the event below says it, once
    assert read_events(epoll, watch.fd) == 1
    assert watch.sock.recv(10) == b"xy"


def test_muting_a_writable_socket_nobody_writes_to_reports_nothing(
    registered: tuple[Watch, socket.socket, select.epoll],
) -> None:
    watch, _, epoll = registered
    watch.mute_reads()
    assert watch.writes_muted
    assert epoll.poll(0) == []  # no wakeup for a writable socket nobody waits on
    watch.on_write = lambda: None  # a writer starts waiting
    watch.want_writes()
    assert not watch.writes_muted
    assert [mask & select.EPOLLOUT for _, mask in epoll.poll(0)] == [select.EPOLLOUT]


def test_a_writer_waiting_keeps_the_write_events_of_a_muted_socket(
    registered: tuple[Watch, socket.socket, select.epoll],
) -> None:
    watch, _, epoll = registered
    watch.on_write = lambda: None
    watch.mute_reads()
    assert watch.muted and not watch.writes_muted
    assert [mask & select.EPOLLOUT for _, mask in epoll.poll(0)] == [select.EPOLLOUT]


def test_unmuting_reports_an_end_that_came_while_muted(
    registered: tuple[Watch, socket.socket, select.epoll],
) -> None:
    watch, theirs, epoll = registered
    watch.mute_reads()
    theirs.shutdown(socket.SHUT_WR)
    assert read_events(epoll, watch.fd) == 0
    watch.unmute_reads()
    assert read_events(epoll, watch.fd) == 1
    assert watch.sock.recv(10) == b""


def test_a_failed_mute_leaves_the_events_on(
    pair: tuple[socket.socket, socket.socket, select.epoll],
) -> None:
    ours, _, epoll = pair
    watch = Watch(ours, epoll)  # never registered: the modify fails (ENOENT)
    watch.mute_reads()
    assert not watch.muted


def test_a_failed_want_writes_is_an_error_for_the_writer(
    pair: tuple[socket.socket, socket.socket, select.epoll],
) -> None:
    ours, _, epoll = pair
    watch = Watch(ours, epoll)
    watch.muted = watch.writes_muted = True  # as if muted, then taken out of the epoll
    with pytest.raises(OSError):
        watch.want_writes()


def test_a_failed_unmute_makes_the_owner_read_at_once(
    pair: tuple[socket.socket, socket.socket, select.epoll],
) -> None:
    ours, _, epoll = pair
    watch = Watch(ours, epoll)
    watch.muted = True  # as if muted, then taken out of the epoll
    watch.unmute_reads()
    assert not watch.muted
    assert watch.readable
