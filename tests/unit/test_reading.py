"""proxy/reading.py over real loopback sockets: reading a ClientHello right after
the proxy answered (`answered=True`: wait for an event first, unless one
already said bytes came), on uvloop and on asyncio's own loop."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from tests.support.servers import tcp_pair
from tests.support.tls_hellos import real_hello

from portcullis.proxy import loop as proxy_loop
from portcullis.proxy import reading
from portcullis.proxy.reactor import reactor_for
from portcullis.proxy.reading import ClientGone, read_client_hello, send_all

HELLO = real_hello("us.icr.io")
TIMEOUT = 5.0


@pytest.fixture(params=[True, False], ids=["uvloop", "asyncio"])
def run(request: pytest.FixtureRequest) -> Iterator[Callable[[Coroutine[Any, Any, Any]], Any]]:
    yield lambda main: proxy_loop.run(main, use_uvloop=request.param)


def _hello_after(client: socket.socket, delay: float) -> None:
    asyncio.get_running_loop().call_later(delay, client.sendall, HELLO)


@pytest.mark.parametrize("answered", [True, False])
def test_a_hello_that_comes_later_is_read(
    run: Callable[[Coroutine[Any, Any, Any]], Any], answered: bool
) -> None:
    async def main() -> None:
        client, conn = tcp_pair()
        with client, conn:
            _hello_after(client, 0.05)
            hello, rest = await read_client_hello(conn, b"", TIMEOUT, answered=answered)
            assert hello.sni == "us.icr.io" and rest == HELLO

    run(main())


@pytest.mark.parametrize("watched", [False, True])
def test_a_hello_already_in_ends_the_wait_at_once(
    run: Callable[[Coroutine[Any, Any, Any]], Any], watched: bool
) -> None:
    # Edge-triggered: when the event for bytes already in was handed out
    # before the read (`watched`), no new event comes; the read must not
    # wait for one. A socket watched for the first time is reported as it is.
    async def main() -> float:
        client, conn = tcp_pair()
        with client, conn:
            client.sendall(HELLO)
            if watched:
                watch = reactor_for(asyncio.get_running_loop()).watch(conn)
                while not watch.readable:
                    await asyncio.sleep(0.01)
            started = time.monotonic()
            hello, _ = await read_client_hello(conn, b"", TIMEOUT, answered=True)
            assert hello.sni == "us.icr.io"
            return time.monotonic() - started

    assert run(main()) < TIMEOUT / 2


def test_a_hello_sent_with_the_connect_is_not_waited_for(
    run: Callable[[Coroutine[Any, Any, Any]], Any]
) -> None:
    async def main() -> None:
        client, conn = tcp_pair()
        with client, conn:
            hello, rest = await asyncio.wait_for(
                read_client_hello(conn, HELLO, TIMEOUT, answered=True), TIMEOUT / 2)
            assert hello.sni == "us.icr.io" and rest == HELLO

    run(main())


@pytest.mark.parametrize(("leaves", "timeout", "raised"), [
    (True, TIMEOUT, ClientGone),  # the client closes instead of sending a hello
    (False, 0.2, TimeoutError),  # the client stays silent
])
def test_no_hello_ends_the_wait(
    run: Callable[[Coroutine[Any, Any, Any]], Any], leaves: bool, timeout: float,
    raised: type[Exception],
) -> None:
    async def main() -> None:
        client, conn = tcp_pair()
        with client, conn:
            if leaves:
                asyncio.get_running_loop().call_later(0.05, client.close)
            with pytest.raises(raised):
                await read_client_hello(conn, b"", timeout, answered=True)

    run(main())


def test_a_short_answer_a_client_never_takes_ends_at_the_answer_timeout(
    run: Callable[[Coroutine[Any, Any, Any]], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the send waited for as long as the client kept its window shut.
    monkeypatch.setattr(reading, "ANSWER_TIMEOUT", 0.3)

    async def main() -> float:
        client, conn = tcp_pair()
        with client, conn:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await send_all(conn, b"x" * 64_000_000)  # more than both buffers hold
            return time.monotonic() - started

    assert 0.2 < run(main()) < 3
