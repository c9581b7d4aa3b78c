"""proxy/lingering.py over real loopback sockets: a refused connection whose
request was never read still delivers its answer, then closes."""

from __future__ import annotations

import asyncio
import socket

import pytest
from tests.support.servers import tcp_pair

from portcullis.proxy import lingering
from portcullis.proxy.lingering import close_refused

ANSWER = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"


async def _read_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    out = b""
    while data := await loop.sock_recv(sock, 65536):
        out += data
    return out


def test_the_answer_survives_an_unread_request_and_the_socket_closes() -> None:
    async def main() -> None:
        client, conn = tcp_pair()
        with client:
            client.send(b"CONNECT us.icr.io:443 HTTP/1.1\r\n\r\n")  # never read by the proxy
            await asyncio.sleep(0.05)
            conn.send(ANSWER)
            close_refused(conn)
            client.send(b"more bytes after the answer")  # would draw a reset on a plain close
            assert await asyncio.wait_for(_read_all(client), 5) == ANSWER
            assert conn.fileno() != -1  # draining until the client's end
            client.shutdown(socket.SHUT_WR)
            await asyncio.sleep(0.1)
            assert conn.fileno() == -1

    asyncio.run(main())


def test_a_client_that_keeps_the_connection_open_is_closed_after_the_linger(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lingering, "LINGER_S", 0.2)

    async def main() -> None:
        client, conn = tcp_pair()
        with client:
            close_refused(conn)
            assert conn.fileno() != -1
            await asyncio.sleep(0.5)
            assert conn.fileno() == -1

    asyncio.run(main())


def test_past_the_bound_a_refusal_closes_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lingering, "MAX_LINGERING", 1)

    async def main() -> None:
        first_client, first = tcp_pair()
        second_client, second = tcp_pair()
        with first_client, second_client:
            close_refused(first)
            close_refused(second)
            assert first.fileno() != -1 and second.fileno() == -1
            first_client.close()
            await asyncio.sleep(0.1)
            assert first.fileno() == -1

    asyncio.run(main())
