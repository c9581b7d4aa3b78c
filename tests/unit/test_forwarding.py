"""One plain-HTTP exchange (proxy/forwarding.py) over real loopback sockets:
what the client is owed when its body or the upstream fails before an answer."""

from __future__ import annotations

import asyncio

import h11
import pytest
from tests.support.servers import tcp_pair

from portcullis.basics.vocabulary import CloseReason, Mode
from portcullis.proxy.attempt import Attempt
from portcullis.proxy.forwarding import (
    Closed,
    Moved,
    Upstream,
    client_request,
    exchange,
    upstream_failure_answer,
)
from portcullis.wire.authority import Authority

AUTHORITY = Authority("echo.example", 80, False)


async def _exchange(request: bytes, upstream_says: bytes | None, *, served: int = 0,
                    timeout: float = 0.3) -> tuple[Closed | None, bytes, Moved]:
    """Run `exchange` for `request` (as the client sent it); the upstream reads
    it and, unless None, answers `upstream_says` and closes. The Closed it
    raised (None if it returned), what the upstream received, the bytes moved."""
    client_end, proxy_client = tcp_pair()
    proxy_upstream, upstream_end = tcp_pair()
    loop = asyncio.get_running_loop()
    try:
        client, parsed = client_request(request, 8192)
        upstream = Upstream(("echo.example", 80), proxy_upstream,
                            Attempt(Mode.HTTP, "127.0.0.1", 1, "t"))
        upstream.served = served

        async def upstream_side() -> bytes:
            received = await loop.sock_recv(upstream_end, 65536)
            if upstream_says is not None:
                await loop.sock_sendall(upstream_end, upstream_says)
                upstream_end.close()
            return received

        upstream_task = asyncio.ensure_future(upstream_side())
        moved = Moved()
        try:
            await exchange(timeout, client, proxy_client, upstream, parsed, AUTHORITY, moved)
            closed = None
        except Closed as exc:
            closed = exc
        return closed, await upstream_task, moved
    finally:
        for sock in (client_end, proxy_client, proxy_upstream, upstream_end):
            sock.close()


GET = b"GET http://echo.example/ HTTP/1.1\r\nHost: echo.example\r\n\r\n"
POST = b"POST http://echo.example/ HTTP/1.1\r\nHost: echo.example\r\nContent-Length: 5\r\n\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "upstream_says", "served", "status", "reason"),
    [
        (GET, b"", 0, 502, CloseReason.CLOSED),  # closed without answering
        (GET, b"", 1, None, CloseReason.CLOSED),  # the same on a kept-alive upstream: quiet
        (GET, b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", 0, 502, CloseReason.CLOSED),
        (GET, b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", 0, None, CloseReason.CLOSED),
        (GET, None, 0, 504, CloseReason.IDLE_TIMEOUT),  # never answers
        (POST + b"he", None, 0, 408, CloseReason.IDLE_TIMEOUT),  # the body stalls
    ],
    ids=["closed", "closed-kept-alive", "bad-length", "cut-short", "silent", "body-stalls"],
)
def test_what_the_client_is_owed(request_bytes: bytes, upstream_says: bytes | None,
                                 served: int, status: int | None, reason: CloseReason) -> None:
    closed, received, _ = asyncio.run(_exchange(request_bytes, upstream_says, served=served))
    assert received.startswith(request_bytes.split(b" ", 1)[0] + b" / HTTP/1.1\r\n")
    assert closed is not None and closed.reason is reason
    assert (closed.answer[0] if closed.answer else None) == status


def test_a_complete_exchange_returns_the_byte_counts() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
    closed, received, moved = asyncio.run(_exchange(POST + b"hello", answer))
    assert closed is None and received.endswith(b"\r\n\r\nhello")
    assert (moved.up, moved.down) == (5, 3)


def test_h11_reads_a_close_before_the_response_as_a_protocol_error() -> None:
    # What `_upstream_event` relies on to tell a close from a broken answer.
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(b"")
    with pytest.raises(h11.RemoteProtocolError):
        conn.next_event()
    assert conn.trailing_data == (b"", True)


@pytest.mark.parametrize(
    ("timed_out", "sending", "kept_alive", "cause", "expected"),
    [
        (True, False, False, None, (504, "no answer from the upstream in 2 s")),
        (True, True, True, None, (504, "the upstream took no request bytes for 2 s")),
        (False, False, False, None, (502, "the upstream closed the connection without answering")),
        (False, False, False, "reset", (502, "the upstream failed before answering: reset")),
        (False, True, False, "EPIPE",
         (502, "the upstream failed while the request was sent: EPIPE")),
        (False, False, True, None, None),  # the keep-alive race: as quiet as the upstream
        (False, True, True, "EPIPE", None),
    ],
)
def test_upstream_failure_answers(timed_out: bool, sending: bool, kept_alive: bool,
                                  cause: str | None, expected: tuple[int, str] | None) -> None:
    assert upstream_failure_answer(timed_out=timed_out, sending=sending, kept_alive=kept_alive,
                                   cause=cause, idle_timeout=2.0) == expected
