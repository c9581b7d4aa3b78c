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


def read_events(epoll: select.epoll, fd: int) -> int:
    return sum(1 for f, mask in epoll.poll(0) if f == fd and mask & select.EPOLLIN)


def test_muted_socket_reports_no_reads_and_unmuting_reports_what_came(
    pair: tuple[socket.socket, socket.socket, select.epoll],
) -> None:
    ours, theirs, epoll = pair
    epoll.register(ours.fileno(), _MASK)
    watch = Watch(ours, epoll)
    epoll.poll(0)  # the registration's own event
    watch.mute_reads()
    assert watch.muted
    theirs.send(b"x")
    theirs.send(b"y")
    assert read_events(epoll, ours.fileno()) == 0
    watch.unmute_reads()
    assert not watch.muted
    assert not watch.readable  # the event below says it, once
    assert read_events(epoll, ours.fileno()) == 1
    assert ours.recv(10) == b"xy"


def test_unmuting_reports_an_end_that_came_while_muted(
    pair: tuple[socket.socket, socket.socket, select.epoll],
) -> None:
    ours, theirs, epoll = pair
    epoll.register(ours.fileno(), _MASK)
    watch = Watch(ours, epoll)
    epoll.poll(0)
    watch.mute_reads()
    theirs.shutdown(socket.SHUT_WR)
    assert read_events(epoll, ours.fileno()) == 0
    watch.unmute_reads()
    assert read_events(epoll, ours.fileno()) == 1
    assert ours.recv(10) == b""


def test_a_failed_mute_leaves_the_events_on(
    pair: tuple[socket.socket, socket.socket, select.epoll],
) -> None:
    ours, _, epoll = pair
    watch = Watch(ours, epoll)  # never registered: the modify fails (ENOENT)
    watch.mute_reads()
    assert not watch.muted


def test_a_failed_unmute_makes_the_owner_read_at_once(
    pair: tuple[socket.socket, socket.socket, select.epoll],
) -> None:
    ours, _, epoll = pair
    watch = Watch(ours, epoll)
    watch.muted = True  # as if muted, then taken out of the epoll
    watch.unmute_reads()
    assert not watch.muted
    assert watch.readable
