"""The relay over real loopback TCP sockets, on uvloop and asyncio, splice and copy paths."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import math
import os
import resource
import socket
import struct
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from tests.support.servers import tcp_pair

from portcullis.basics.vocabulary import CloseReason
from portcullis.proxy import loop as proxy_loop
from portcullis.proxy import relay as relay_mod
from portcullis.proxy.direction import Direction
from portcullis.proxy.pipes import PIPE_POOL_MAX, close_pipe_pool
from portcullis.proxy.reactor import reactor_for
from portcullis.proxy.relay import RelayResult, relay
from portcullis.proxy.tunnel import Tunnel

T = TypeVar("T")
MiB = 1024 * 1024
# Generous bound that only stops a broken relay from hanging the suite.
HANG = 20.0


@dataclass(frozen=True)
class Env:
    use_uvloop: bool
    use_splice: bool

    def run(self, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
        async def guarded() -> T:
            return await asyncio.wait_for(main(), HANG)

        return proxy_loop.run(guarded(), use_uvloop=self.use_uvloop)


@pytest.fixture(
    params=[(True, True), (True, False), (False, True), (False, False)],
    ids=["uvloop-splice", "uvloop-copy", "asyncio-splice", "asyncio-copy"],
)
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    use_uvloop, use_splice = request.param
    # uvloop is a dependency and the target is Linux: a missing one is a failure.
    assert not use_uvloop or proxy_loop.uvloop_available(), "uvloop is not installed"
    assert not use_splice or relay_mod.USE_SPLICE, "os.splice is unavailable"
    yield Env(use_uvloop, use_splice)
    close_pipe_pool()


@dataclass
class Rig:
    """client app <-> [relay] <-> upstream app; the test plays both apps."""

    client: socket.socket
    upstream: socket.socket
    relay_client: socket.socket
    relay_upstream: socket.socket
    task: asyncio.Task[RelayResult]

    def close_apps(self) -> None:
        self.client.close()
        self.upstream.close()


def start_rig(env: Env, **kwargs: Any) -> Rig:
    # Spliced from the first byte, so the splice path meets every case here.
    kwargs.setdefault("splice_after", 0)
    client, relay_client = tcp_pair()
    relay_upstream, upstream = tcp_pair()
    task = asyncio.ensure_future(
        relay(relay_client, relay_upstream, use_splice=env.use_splice, **kwargs)
    )
    return Rig(client, upstream, relay_client, relay_upstream, task)


async def send_and_shut(sock: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)
    sock.shutdown(socket.SHUT_WR)


async def read_to_eof(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    chunks = []
    while chunk := await loop.sock_recv(sock, 256 * 1024):
        chunks.append(chunk)
    return b"".join(chunks)


async def read_exactly(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        assert chunk, "EOF before the expected bytes"
        data += chunk
    return data


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_loop_kind(env: Env) -> None:
    async def main() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert env.run(main).startswith("uvloop") == env.use_uvloop


def test_bulk_each_way_then_both_at_once(env: Env) -> None:
    up, down = os.urandom(8 * MiB), os.urandom(6 * MiB + 123)

    async def sequential() -> None:
        rig = start_rig(env)
        # Upload first, then the answer: one direction at a time.
        _, got_up = await asyncio.gather(send_and_shut(rig.client, up), read_to_eof(rig.upstream))
        _, got_down = await asyncio.gather(
            send_and_shut(rig.upstream, down), read_to_eof(rig.client)
        )
        result = await rig.task
        rig.close_apps()
        assert sha(got_up) == sha(up)
        assert sha(got_down) == sha(down)
        assert result == RelayResult(len(up), len(down), CloseReason.DONE)

    async def simultaneous() -> None:
        rig = start_rig(env)
        _, _, got_up, got_down = await asyncio.gather(
            send_and_shut(rig.client, up),
            send_and_shut(rig.upstream, down),
            read_to_eof(rig.upstream),
            read_to_eof(rig.client),
        )
        result = await rig.task
        rig.close_apps()
        assert sha(got_up) == sha(up)
        assert sha(got_down) == sha(down)
        assert result == RelayResult(len(up), len(down), CloseReason.DONE)

    env.run(sequential)
    env.run(simultaneous)


@pytest.mark.parametrize("ending", ["done", "client_reset"])
def test_a_finished_tunnel_is_freed_without_the_collector(env: Env, ending: str) -> None:
    # Nothing of a finished tunnel is left in a reference cycle: with the
    # collector off, no Tunnel or Direction object may remain once relay returns.
    async def main() -> None:
        rig = start_rig(env)
        if ending == "done":
            await asyncio.gather(send_and_shut(rig.client, b"hello"), read_to_eof(rig.upstream))
            await asyncio.gather(send_and_shut(rig.upstream, b"bye"), read_to_eof(rig.client))
        else:
            await read_exactly(rig.upstream, 0)
            reset(rig.client)
        await rig.task
        rig.close_apps()

    gc.collect()
    gc.disable()
    try:
        env.run(main)
        left = [o for o in gc.get_objects() if isinstance(o, Tunnel | Direction)]
    finally:
        gc.enable()
    assert left == []


def test_client_half_close_then_reply(env: Env) -> None:
    async def main() -> None:
        rig = start_rig(env)
        await send_and_shut(rig.client, b"request")
        # The upstream only answers once it has seen the client's EOF.
        assert await read_to_eof(rig.upstream) == b"request"
        reply = os.urandom(300_000)
        await send_and_shut(rig.upstream, reply)
        assert await read_to_eof(rig.client) == reply
        result = await rig.task
        rig.close_apps()
        assert result == RelayResult(7, len(reply), CloseReason.DONE)

    env.run(main)


def test_upstream_half_close_then_client_sends(env: Env) -> None:
    async def main() -> None:
        rig = start_rig(env)
        await send_and_shut(rig.upstream, b"banner")
        assert await read_to_eof(rig.client) == b"banner"
        assert not rig.task.done()
        late = os.urandom(200_000)
        await send_and_shut(rig.client, late)
        assert await read_to_eof(rig.upstream) == late
        result = await rig.task
        rig.close_apps()
        assert result == RelayResult(len(late), 6, CloseReason.DONE)

    env.run(main)


def test_initial_up_goes_first(env: Env) -> None:
    async def main() -> None:
        client, relay_client = tcp_pair()
        relay_upstream, upstream = tcp_pair()
        # Already waiting in the client socket before the relay starts.
        client.sendall(b" and the rest")
        task = asyncio.ensure_future(
            relay(relay_client, relay_upstream, initial_up=b"ClientHello",
                  use_splice=env.use_splice, splice_after=0)
        )
        assert await read_exactly(upstream, 24) == b"ClientHello and the rest"
        client.shutdown(socket.SHUT_WR)
        upstream.shutdown(socket.SHUT_WR)
        assert await read_to_eof(upstream) == b""
        assert await read_to_eof(client) == b""
        result = await task
        client.close()
        upstream.close()
        assert result == RelayResult(24, 0, CloseReason.DONE)

    env.run(main)


def test_idle_timeout_closes_both(env: Env) -> None:
    async def main() -> None:
        rig = start_rig(env, idle_timeout=0.3)
        await asyncio.get_running_loop().sock_sendall(rig.client, b"x")
        assert await read_exactly(rig.upstream, 1) == b"x"
        result = await rig.task
        assert result == RelayResult(1, 0, CloseReason.IDLE_TIMEOUT)
        assert rig.relay_client.fileno() == -1 and rig.relay_upstream.fileno() == -1
        # Both apps see the tunnel end.
        assert await read_to_eof(rig.client) == b""
        assert await read_to_eof(rig.upstream) == b""
        rig.close_apps()

    env.run(main)


def test_traffic_keeps_tunnel_open_past_idle_timeout(env: Env) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        rig = start_rig(env, idle_timeout=0.5)
        # Busy for 3 idle periods, in both directions alternately.
        for i in range(15):
            sender, receiver = (rig.client, rig.upstream) if i % 2 else (rig.upstream, rig.client)
            await loop.sock_sendall(sender, b"ping")
            assert await read_exactly(receiver, 4) == b"ping"
            await asyncio.sleep(0.1)
        assert not rig.task.done()
        result = await rig.task
        rig.close_apps()
        assert result == RelayResult(7 * 4, 8 * 4, CloseReason.IDLE_TIMEOUT)

    env.run(main)


def test_bytes_and_their_end_in_one_event_are_both_passed_on(env: Env) -> None:
    # The copy path takes a short read for "nothing left" (no read to EAGAIN),
    # unless the event said the end came too: an end that came before the
    # event is not reported again (reactor.py). Both ends here come with their
    # bytes, before the relay's first event.
    async def main() -> None:
        rig = start_rig(env, splice_after=math.inf)
        rig.upstream.sendall(b"banner")
        rig.upstream.shutdown(socket.SHUT_WR)
        rig.client.sendall(b"hello")
        rig.client.shutdown(socket.SHUT_WR)
        assert await read_to_eof(rig.client) == b"banner"
        assert await read_to_eof(rig.upstream) == b"hello"
        result = await rig.task
        rig.close_apps()
        assert result == RelayResult(5, 6, CloseReason.DONE)

    env.run(main)


@pytest.mark.parametrize("side", ["client", "upstream"])
def test_reset_is_reported_and_passed_on(env: Env, side: str) -> None:
    async def main() -> None:
        rig = start_rig(env)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(rig.client, b"abc")
        assert await read_exactly(rig.upstream, 3) == b"abc"
        await loop.sock_sendall(rig.upstream, b"de")
        assert await read_exactly(rig.client, 2) == b"de"
        victim, survivor = (rig.client, rig.upstream) if side == "client" else (
            rig.upstream, rig.client)
        reset(victim)
        result = await rig.task
        expected = CloseReason.CLIENT_RESET if side == "client" else CloseReason.UPSTREAM_RESET
        assert result == RelayResult(3, 2, expected)
        with pytest.raises(ConnectionResetError):
            await read_to_eof(survivor)
        survivor.close()

    env.run(main)


def test_cancel_reports_cancelled_and_closes(env: Env) -> None:
    async def main() -> None:
        rig = start_rig(env)
        await asyncio.get_running_loop().sock_sendall(rig.client, b"hello")
        assert await read_exactly(rig.upstream, 5) == b"hello"
        rig.task.cancel()
        result = await rig.task
        assert result == RelayResult(5, 0, CloseReason.CANCELLED)
        assert rig.relay_client.fileno() == -1 and rig.relay_upstream.fileno() == -1
        assert await read_to_eof(rig.client) == b""
        rig.close_apps()

    env.run(main)


async def send_until_stalled(sock: socket.socket, limit: int) -> int:
    """Send random bytes until `sock` has taken none for 0.5 s (or `limit` are
    sent); how many it took."""
    loop = asyncio.get_running_loop()
    chunk = os.urandom(256 * 1024)
    sent = 0
    stalled_since: float | None = None
    while sent < limit:
        try:
            sent += sock.send(chunk)
            stalled_since = None
        except BlockingIOError:
            now = loop.time()
            stalled_since = stalled_since or now
            if now - stalled_since > 0.5:
                break
            await asyncio.sleep(0.02)
    return sent


def test_backpressure_bounds_what_the_relay_takes(env: Env) -> None:
    async def main() -> None:
        rig = start_rig(env)
        # The upstream app reads nothing: the client must soon be unable to send.
        sent = await send_until_stalled(rig.client, 256 * MiB)
        # Kernel socket buffers plus one pipe at most, far from 256 MiB.
        assert sent < 64 * MiB
        # While its destination is full, the direction takes no read events
        # (edge-triggered, each segment arriving would wake the loop).
        assert reactor_for(asyncio.get_running_loop()).watch(rig.relay_client).muted
        rig.client.shutdown(socket.SHUT_WR)
        got = await read_to_eof(rig.upstream)
        assert len(got) == sent
        rig.upstream.shutdown(socket.SHUT_WR)
        result = await rig.task
        rig.close_apps()
        assert result == RelayResult(sent, 0, CloseReason.DONE)

    env.run(main)


def test_both_directions_stalled_at_once_then_drained(env: Env) -> None:
    # Each direction mutes its source while its destination is full; the second
    # to stall writes to a socket the first muted with no writer waiting.
    async def main() -> None:
        rig = start_rig(env)
        up = await send_until_stalled(rig.client, 256 * MiB)
        down = await send_until_stalled(rig.upstream, 256 * MiB)
        # The client drains first while up stays stalled (and its source muted):
        # down must hear that the client became writable all the same.
        rig.upstream.shutdown(socket.SHUT_WR)
        assert len(await read_to_eof(rig.client)) == down
        rig.client.shutdown(socket.SHUT_WR)
        assert len(await read_to_eof(rig.upstream)) == up
        result = await rig.task
        rig.close_apps()
        assert result == RelayResult(up, down, CloseReason.DONE)

    env.run(main)


def test_no_fd_leak_after_many_relays(env: Env) -> None:
    async def one(reset_client: bool) -> None:
        rig = start_rig(env)
        await asyncio.get_running_loop().sock_sendall(rig.client, b"q" * 70_000)
        await read_exactly(rig.upstream, 70_000)
        if reset_client:
            reset(rig.client)
        else:
            rig.client.shutdown(socket.SHUT_WR)
            rig.upstream.shutdown(socket.SHUT_WR)
        await rig.task
        rig.close_apps()

    async def main() -> None:
        await asyncio.gather(*(one(i % 3 == 0) for i in range(60)))

    async def warm_up() -> None:
        pass

    # libuv opens a process-wide signal pipe with its first loop, once: not ours.
    env.run(warm_up)
    close_pipe_pool()
    before = open_fds()
    for _ in range(3):
        env.run(main)
    close_pipe_pool()
    assert open_fds() == before


def test_idle_tunnels_hold_no_pipes(env: Env) -> None:
    n = 40

    async def main() -> None:
        loop = asyncio.get_running_loop()
        close_pipe_pool()
        before = open_fds()
        rigs = [start_rig(env) for _ in range(n)]
        for rig in rigs:
            # Data flowed both ways, so each direction did take a pipe once.
            await loop.sock_sendall(rig.client, b"u" * 100_000)
            await loop.sock_sendall(rig.upstream, b"d" * 100_000)
            await read_exactly(rig.upstream, 100_000)
            await read_exactly(rig.client, 100_000)
        await asyncio.sleep(0.05)
        with_pool = open_fds() - before
        assert with_pool <= 4 * n + 2 * PIPE_POOL_MAX
        close_pipe_pool()
        # Exactly the two app sockets and the relay's two sockets per tunnel.
        assert open_fds() - before == 4 * n
        assert not any(rig.task.done() for rig in rigs)
        for rig in rigs:
            rig.task.cancel()
        results = await asyncio.gather(*(rig.task for rig in rigs))
        assert {r.close_reason for r in results} == {CloseReason.CANCELLED}
        for rig in rigs:
            rig.close_apps()
        assert open_fds() == before

    env.run(main)


def test_relay_closes_sockets_even_if_it_cannot_start(env: Env) -> None:
    async def main() -> None:
        client, relay_client = tcp_pair()
        relay_upstream, upstream = tcp_pair()
        relay_upstream.close()  # a caller bug: upstream already closed
        with pytest.raises(OSError):
            await relay(relay_client, relay_upstream, use_splice=env.use_splice, splice_after=0)
        assert relay_client.fileno() == -1
        with contextlib.suppress(ConnectionResetError):
            assert await read_to_eof(client) == b""
        client.close()
        upstream.close()

    env.run(main)


@pytest.mark.parametrize("use_uvloop", [True, False], ids=["uvloop", "asyncio"])
def test_out_of_fds_falls_back_to_copying(use_uvloop: bool) -> None:
    assert relay_mod.USE_SPLICE, "os.splice is unavailable"
    # Only the splice path needs fds beyond the two sockets.
    env = Env(use_uvloop, use_splice=True)

    async def main() -> None:
        rig = start_rig(env)
        await asyncio.sleep(0)  # let the relay register its readers
        close_pipe_pool()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        lowest_free = os.dup(0)
        os.close(lowest_free)
        # No fd can be opened any more, so no pipe: the relay must copy instead.
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
        try:
            payload = os.urandom(3 * MiB)
            _, got = await asyncio.gather(
                send_and_shut(rig.client, payload), read_to_eof(rig.upstream)
            )
            with pytest.raises(OSError):
                os.pipe()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert sha(got) == sha(payload)
        rig.upstream.shutdown(socket.SHUT_WR)
        result = await rig.task
        rig.close_apps()
        assert result == RelayResult(len(payload), 0, CloseReason.DONE)

    env.run(main)


@pytest.mark.parametrize("use_uvloop", [True, False], ids=["uvloop", "asyncio"])
def test_small_tunnels_copy_and_bulk_splices_after_splice_after(use_uvloop: bool) -> None:
    # The other tests splice from the first byte (splice_after=0); by default a
    # direction copies its first SPLICE_AFTER bytes. A pipe, once taken, stays
    # in the pool afterwards (two fds): that tells which path moved the bytes.
    assert relay_mod.USE_SPLICE, "os.splice is unavailable"
    env = Env(use_uvloop, use_splice=True)

    async def one(size: int) -> int:
        close_pipe_pool()
        before = open_fds()
        client, relay_client = tcp_pair()
        relay_upstream, upstream = tcp_pair()
        task = asyncio.ensure_future(relay(relay_client, relay_upstream, use_splice=True))
        payload = os.urandom(size)
        _, got = await asyncio.gather(send_and_shut(client, payload), read_to_eof(upstream))
        upstream.shutdown(socket.SHUT_WR)
        assert await read_to_eof(client) == b""
        result = await task
        client.close()
        upstream.close()
        assert sha(got) == sha(payload)
        assert result == RelayResult(size, 0, CloseReason.DONE)
        return open_fds() - before

    async def main() -> None:
        assert await one(relay_mod.SPLICE_AFTER // 2) == 0  # copied: no pipe was taken
        assert await one(8 * relay_mod.SPLICE_AFTER) == 2  # spliced past the threshold
        close_pipe_pool()

    env.run(main)
