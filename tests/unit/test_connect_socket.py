"""upstream.connect_socket: the dial that bypasses loop.sock_connect, on both loops."""

from __future__ import annotations

import asyncio
import socket

import pytest

from portcullis.proxy import loop as proxy_loop
from portcullis.proxy.dialer import connect_socket


def _nonblocking() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock


@pytest.fixture(params=[True, False], ids=["uvloop", "asyncio"])
def use_uvloop(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_connects_and_carries_bytes(use_uvloop: bool) -> None:
    async def main() -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        sock = _nonblocking()
        try:
            await connect_socket(asyncio.get_running_loop(), sock, listener.getsockname())
            peer, _ = listener.accept()
            with peer:
                sock.send(b"ping")
                assert peer.recv(4) == b"ping"
        finally:
            sock.close()
            listener.close()

    proxy_loop.run(main(), use_uvloop=use_uvloop)


def test_refused_raises_the_errno_subclass(use_uvloop: bool) -> None:
    async def main() -> None:
        with socket.socket() as probe:  # a port with nobody listening
            probe.bind(("127.0.0.1", 0))
            address = probe.getsockname()
        sock = _nonblocking()
        try:
            with pytest.raises(ConnectionRefusedError):
                await connect_socket(asyncio.get_running_loop(), sock, address)
        finally:
            sock.close()

    proxy_loop.run(main(), use_uvloop=use_uvloop)


def test_cancelled_wait_leaves_no_writer_behind(use_uvloop: bool) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        # A full backlog makes a loopback connect hang in SYN_SENT.
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        fillers = []
        sock = _nonblocking()
        try:
            for _ in range(8):
                filler = _nonblocking()
                filler.connect_ex(listener.getsockname())
                fillers.append(filler)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await connect_socket(loop, sock, listener.getsockname())
            # Nothing is left registered for the fd (asyncio reports it;
            # uvloop's remove_writer always answers None).
            assert not loop.remove_writer(sock.fileno())
        finally:
            sock.close()
            for filler in fillers:
                filler.close()
            listener.close()

    proxy_loop.run(main(), use_uvloop=use_uvloop)


@pytest.mark.parametrize("mark", [True, False])
def test_dial_marks_its_socket_only_when_asked(mark: bool) -> None:
    # The mark lets a same-host transparent set-up's nftables rules skip the
    # proxy's own connections; without a transparent listener it is not set.
    import ipaddress
    import os

    from portcullis.basics.vocabulary import Mode
    from portcullis.net.sockets import SOCKET_MARK
    from portcullis.observe.metrics import Metrics
    from portcullis.proxy.attempt import Attempt
    from portcullis.proxy.dialer import dial

    async def main() -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        attempt = Attempt(Mode.EXPLICIT, "127.0.0.1", 1, "t-1")
        try:
            sock = await dial(5.0, Metrics(), attempt, [ipaddress.ip_address("127.0.0.1")],
                              listener.getsockname()[1], mark=mark)
            with sock:
                assert attempt.dialed == f"127.0.0.1:{listener.getsockname()[1]}"
                return sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK)
        finally:
            listener.close()

    got = proxy_loop.run(main(), use_uvloop=True)
    # Setting a mark needs CAP_NET_ADMIN: as another user the dial goes on unmarked.
    assert got == (SOCKET_MARK if mark and os.geteuid() == 0 else 0)
