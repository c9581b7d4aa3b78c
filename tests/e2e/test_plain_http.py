"""Plain HTTP through the explicit listener (absolute-form), and the proxy's
error answers: 400, 403, 431, 502 (DNS, refused, an upstream that does not
answer HTTP), 503 (limit), 504 (timeout)."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.dnsserver import DnsServer
from tests.support.http import body_of, read_to_close, responses
from tests.support.portcullis_proc import RunningPortcullis, policy_for, run_portcullis
from tests.support.servers import EchoServer, ScriptedOrigin, full_listener

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]

ECHO_IP = "127.0.0.4"
SILENT_IP = "127.0.0.5"
CLOSED_IP = "127.0.0.6"
SCRIPTED_IP = "127.0.0.7"


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    with EchoServer(ECHO_IP) as server:
        yield server


@pytest.fixture(scope="module")
def silent() -> Iterator[int]:
    """A listener whose accept queue is full: further SYNs are dropped (connect timeout)."""
    with full_listener(SILENT_IP) as port:
        yield port


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedOrigin]:
    with ScriptedOrigin(SCRIPTED_IP) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, echo: EchoServer, silent: int,
          scripted: ScriptedOrigin) -> Iterator[RunningPortcullis]:
    with DnsServer().start() as dns:
        dns.fail(None, "nxdomain")
        hosts = {"echo.example": [ECHO_IP], "silent.example": [SILENT_IP],
                 "closed.example": [CLOSED_IP], "scripted.example": [SCRIPTED_IP]}
        policy = policy_for(hosts, [], extra={"limits": {
            "max_connections": 4, "header_timeout": 3, "connect_timeout": 1,
        }})
        policy["resolver"]["servers"] = [dns.server]
        policy["resolver"]["timeout"] = 1
        policy["rules"] = [{
            "name": "web", "from": ["workers"],
            "to": ["echo.example", "silent.example", "closed.example", "missing.example",
                   "scripted.example"],
            "ports": [echo.port, silent, 80, scripted.port],
        }]
        with run_portcullis(tmp_path_factory.mktemp("plain"), policy) as running:
            yield running


def exchange(proxy: RunningPortcullis, raw: bytes, *, answers: int = 1) -> list[bytes]:
    return responses(proxy.explicit, raw, answers=answers)


def _get(host: str) -> bytes:
    """An absolute-form GET of `host`'s root, kept alive."""
    return f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def test_get_absolute_form_is_forwarded_in_origin_form(proxy: RunningPortcullis,
                                                       echo: EchoServer) -> None:
    raw = (f"GET http://echo.example:{echo.port}/v2/?q=1 HTTP/1.1\r\n"
           f"Host: echo.example:{echo.port}\r\nProxy-Connection: keep-alive\r\n"
           "Connection: close\r\n\r\n").encode()
    [answer] = exchange(proxy, raw)
    assert answer.startswith(b"HTTP/1.1 200 ")
    seen = body_of(answer)
    assert seen["method"] == "GET" and seen["target"] == "/v2/?q=1"
    names = [n for n, _ in seen["headers"]]  # type: ignore[union-attr]
    assert "host" in names and "proxy-connection" not in names
    record = proxy.decisions("echo.example")[-1]
    assert (record["mode"], record["decision"], record["port"]) == ("http", "allow", echo.port)


def test_head_and_post_with_length_and_chunked_bodies(proxy: RunningPortcullis,
                                                      echo: EchoServer) -> None:
    host = f"echo.example:{echo.port}"
    head = exchange(proxy, f"HEAD http://{host}/ HTTP/1.1\r\nHost: {host}\r\n"
                           "Connection: close\r\n\r\n".encode())[0]
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
    body = b"x" * 100_000
    [posted] = exchange(proxy, f"POST http://{host}/upload HTTP/1.1\r\nHost: {host}\r\n"
                               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                               .encode() + body)
    assert body_of(posted)["body_sha256"] == hashlib.sha256(body).hexdigest()
    chunks = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    [chunked] = exchange(proxy, f"POST http://{host}/c HTTP/1.1\r\nHost: {host}\r\n"
                                "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                                .encode() + chunks)
    assert body_of(chunked)["body_len"] == 11
    assert body_of(chunked)["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()


def test_keep_alive_serves_two_requests_on_one_connection(proxy: RunningPortcullis,
                                                          echo: EchoServer) -> None:
    host = f"echo.example:{echo.port}"
    before = len(proxy.decisions("echo.example"))
    raw = (f"GET http://{host}/one HTTP/1.1\r\nHost: {host}\r\n\r\n"
           f"GET http://{host}/two HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
           ).encode()
    first, second = exchange(proxy, raw, answers=2)
    assert body_of(first)["target"] == "/one" and body_of(second)["target"] == "/two"
    proxy.wait_for_log(lambda r: len(proxy.decisions("echo.example")) >= before + 2)


@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [
        (b"GET http://echo.example:PORT/ HTTP/1.1\r\nHost: other.example\r\n\r\n", 400,
         "bad_request"),
        (b"POST http://echo.example:PORT/ HTTP/1.1\r\nHost: echo.example:PORT\r\n"
         b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "bad_request"),
        (b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n", 403, "no_rule"),
        (b"GET http://echo.example:PORT/ HTTP/1.1\r\nHost: echo.example:PORT\r\nX: "
         + b"a" * 20000 + b"\r\n\r\n", 431, "header_too_large"),
        (b"CONNECT missing.example:80 HTTP/1.1\r\n\r\n", 502, "dns_failure"),
        (b"CONNECT closed.example:80 HTTP/1.1\r\n\r\n", 502, "connect_failed"),
        (b"CONNECT silent.example:SILENT HTTP/1.1\r\n\r\n", 504, "connect_timeout"),
    ],
)
def test_error_answers(proxy: RunningPortcullis, echo: EchoServer, silent: int,
                       raw: bytes, status: int, reason: str) -> None:
    raw = raw.replace(b"SILENT", str(silent).encode()).replace(b"PORT", str(echo.port).encode())
    with socket.create_connection(proxy.explicit, timeout=10) as sock:
        sock.sendall(raw)
        answer = read_to_close(sock, reset_ok=False)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    assert f"X-Portcullis-Reason: {reason}".encode() in answer
    proxy.wait_for_log(lambda r: r.get("event") == "decision" and r["reason"] == reason)


@pytest.mark.parametrize(
    ("reply", "detail"),
    [
        (b"", b"the upstream closed the connection without answering"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", b"the upstream's answer is not HTTP/1.1"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", b"the upstream's answer is not HTTP/1.1"),
    ],
    ids=["closed", "bad-length", "not-http"],
)
def test_an_upstream_that_does_not_answer_http_is_a_502(
    proxy: RunningPortcullis, scripted: ScriptedOrigin, reply: bytes, detail: bytes
) -> None:
    # Before, the client's connection was closed without a word.
    scripted.replies = [reply]
    host = f"scripted.example:{scripted.port}"
    with socket.create_connection(proxy.explicit, timeout=10) as sock:
        sock.sendall(_get(host))
        answer = read_to_close(sock, reset_ok=False)
    assert answer.startswith(b"HTTP/1.1 502 "), answer[:200]
    assert detail in answer, answer
    proxy.wait_for_log(lambda r: r.get("event") == "close" and r["host"] == "scripted.example")


def test_a_kept_alive_upstream_that_closed_closes_the_client_quietly(
    proxy: RunningPortcullis, scripted: ScriptedOrigin
) -> None:
    # The keep-alive race every client retries on (RFC 9112 §9.3.1): no 502 for it.
    scripted.replies = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]
    host = f"scripted.example:{scripted.port}"
    get = _get(host)
    with socket.create_connection(proxy.explicit, timeout=10) as sock:
        sock.sendall(get)
        first = b""
        while not first.endswith(b"ok"):
            first += sock.recv(65536) or b"<closed>"
        time.sleep(0.3)  # the origin has closed its end by now
        sock.sendall(get)
        rest = read_to_close(sock)
    assert first.startswith(b"HTTP/1.1 200 ") and first.endswith(b"ok"), first
    assert rest == b""


def test_a_client_that_stops_reading_is_closed_at_the_idle_timeout(
    tmp_path: Path, scripted: ScriptedOrigin
) -> None:
    # Before, the proxy waited to send the rest of the answer for as long as
    # the client kept its window shut, holding its slot and the upstream's.
    body = b"x" * 64_000_000  # more than the sockets' buffers hold
    scripted.replies = [f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                        + body]
    policy = policy_for({"scripted.example": [SCRIPTED_IP]}, ["scripted.example"],
                        extra={"limits": {"idle_timeout": 1}})
    policy["rules"][0]["ports"] = [scripted.port]
    host = f"scripted.example:{scripted.port}"
    with run_portcullis(tmp_path / "p", policy) as running, \
            socket.create_connection(running.explicit, timeout=10) as sock:
        sock.sendall(_get(host))
        assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
        record = running.wait_for_log(lambda r: r.get("event") == "close", timeout=15)
        assert record["close_reason"] == "idle_timeout"
        assert 0 < record["bytes_down"] < len(body)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"-5\r\nhello\r\n0\r\n\r\n", b"request body: "),
        (b"5\nhello\n0\n\n", b"request body: "),
        (b"5\r\nhel", b"request body: peer closed connection without sending complete"),
    ],
    ids=["negative-size", "bare-lf", "ends-early"],
)
def test_a_body_that_breaks_its_framing_is_a_400(
    proxy: RunningPortcullis, echo: EchoServer, body: bytes, detail: bytes
) -> None:
    # The head has gone upstream by then; the client still hears why it ended.
    host = f"echo.example:{echo.port}"
    with socket.create_connection(proxy.explicit, timeout=10) as sock:
        sock.sendall(f"POST http://{host}/ HTTP/1.1\r\nHost: {host}\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode() + body)
        sock.shutdown(socket.SHUT_WR)
        answer = read_to_close(sock, reset_ok=False)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert detail in answer, answer
    proxy.wait_for_log(lambda r: r.get("event") == "close" and r["close_reason"] == "bad_request")


def test_connection_limit_answers_503_then_recovers(proxy: RunningPortcullis,
                                                    echo: EchoServer) -> None:
    idle = [socket.create_connection(proxy.explicit, timeout=10) for _ in range(4)]
    time.sleep(0.3)
    try:
        with socket.create_connection(proxy.explicit, timeout=10) as sock:
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"over_capacity" in answer
        # A client that sends its request at once (as every client does) still
        # reads the 503: the refusal is not closed over its unread request,
        # which made the kernel answer with a reset that took the 503 along.
        for _ in range(5):
            with socket.create_connection(proxy.explicit, timeout=10) as sock:
                sock.sendall(b"CONNECT echo.example:443 HTTP/1.1\r\n\r\n")
                time.sleep(0.05)
                sock.sendall(b"x" * 1000)
                answer = read_to_close(sock, reset_ok=False)
            assert answer.startswith(b"HTTP/1.1 503 ") and b"over_capacity" in answer, answer
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)
    host = f"echo.example:{echo.port}"
    [answer] = exchange(proxy, f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n"
                               "Connection: close\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_a_reload_changes_the_connection_limit_for_the_next_connection(
    tmp_path: Path, echo: EchoServer
) -> None:
    def limited(limit: int) -> dict[str, Any]:
        # A header_timeout far beyond the test: the idle connections keep their slots.
        policy = policy_for({"echo.example": [ECHO_IP]}, ["echo.example"], extra={"limits": {
            "max_connections": limit, "header_timeout": 60, "drain_timeout": 5}})
        policy["rules"][0]["ports"] = [echo.port]
        return policy

    host = f"echo.example:{echo.port}"
    get = f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    with run_portcullis(tmp_path / "p", limited(2)) as running:
        idle = [socket.create_connection(running.explicit, timeout=10) for _ in range(2)]
        try:
            time.sleep(0.3)
            with socket.create_connection(running.explicit, timeout=10) as sock:
                answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 503 ") and b"over_capacity" in answer, answer
            running.use_policy(limited(3))
            # The two idle connections still hold their slots; the limit is now 3.
            [answer] = responses(running.explicit, get.encode())
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        finally:
            for sock in idle:
                sock.close()


def test_slow_header_is_closed_at_the_header_timeout(proxy: RunningPortcullis) -> None:
    with socket.create_connection(proxy.explicit, timeout=10) as sock:
        sock.sendall(b"GET http://echo.example/ HTTP/1.1\r\n")
        started = time.monotonic()
        answer = sock.recv(65536)
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert 2 < elapsed < 8
