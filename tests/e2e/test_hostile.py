"""Hostile clients, second round (docs/security.md): each class of attack with
several variants, against one running Portcullis on loopback.

- slot exhaustion: strangers at the proxy and at the admin port hold no slot;
- slow heads: one `header_timeout` per whole head, for every head on a
  kept-alive connection (the admin port's own head limit likewise);
- pipelining: a CONNECT (or any bad head) behind a plain request is refused
  with an HTTP status and a record, never dialled;
- Host bytes: what is decided is what is forwarded;
- trailers: framing, routing and authentication fields never reach the upstream;
- records: every relayed request has its own record of what was dialled.
"""

from __future__ import annotations

import contextlib
import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.support.http import (
    Answer,
    body_of,
    dial,
    drip_until_answered,
    read_head,
    read_to_close,
    responses,
)
from tests.support.portcullis_proc import RunningPortcullis, policy_for, run_portcullis
from tests.support.servers import EchoServer, Trap
from tests.support.tls_hellos import real_hello

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]

ECHO_IP = "127.0.0.4"
TRAP_IP = "127.0.0.7"
WORKER = "127.0.0.1"
STRANGER = "127.0.0.9"
HEADER_TIMEOUT = 1.5
MAX_CONNECTIONS = 6


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    with EchoServer(ECHO_IP) as server:
        yield server


@pytest.fixture(scope="module")
def trap() -> Iterator[Trap]:
    with Trap(TRAP_IP) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, echo: EchoServer, trap: Trap
          ) -> Iterator[RunningPortcullis]:
    hosts = {"web.test": [ECHO_IP], "trap.test": [TRAP_IP], "raw.test": [ECHO_IP]}
    policy = policy_for(hosts, [], sources=(f"{WORKER}/32",), extra={
        "limits": {"max_connections": MAX_CONNECTIONS, "header_timeout": HEADER_TIMEOUT,
                   "client_hello_timeout": HEADER_TIMEOUT, "drain_timeout": 2},
        "admin_allow": [f"{WORKER}/32"],
    })
    policy["rules"] = [
        {"name": "web", "from": ["workers"], "to": ["web.test"], "ports": [echo.port, 443]},
        {"name": "trap", "from": ["workers"], "to": ["trap.test"], "ports": [trap.port, 443]},
        {"name": "raw", "from": ["workers"], "to": ["raw.test"], "ports": [echo.port],
         "raw": True},
    ]
    with run_portcullis(tmp_path_factory.mktemp("hostile"), policy) as running:
        yield running


def _get(port: int, host: str = "web.test", path: str = "/", extra: str = "") -> bytes:
    return (f"GET http://{host}:{port}{path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"{extra}\r\n").encode()


def _decisions_since(proxy: RunningPortcullis, mark: int) -> list[dict[str, object]]:
    return [r for r in proxy.records()[mark:] if r.get("event") == "decision"]


# --- slot exhaustion ------------------------------------------------------------------


@pytest.mark.parametrize("silent", [MAX_CONNECTIONS, 3 * MAX_CONNECTIONS])
def test_strangers_hold_no_slot_and_are_answered_at_accept(
    proxy: RunningPortcullis, echo: EchoServer, silent: int
) -> None:
    mark = len(proxy.records())
    with contextlib.ExitStack() as stack:
        strangers = [stack.enter_context(dial(proxy.explicit, source=STRANGER))
                     for _ in range(silent)]
        # A worker still gets through while the strangers' sockets stay open.
        [answer] = responses(proxy.explicit, _get(echo.port, extra="Connection: close\r\n"),
                             source=WORKER)
        assert answer.startswith(b"HTTP/1.1 200 ")
        for sock in strangers:  # each was answered without sending a byte
            head = Answer(*read_head(sock))
            assert head.status == 403 and head.header("X-Portcullis-Reason") == "source_unknown"
    refused = [r for r in _decisions_since(proxy, mark) if r["client"] == STRANGER]
    assert len(refused) == silent
    assert {(r["decision"], r["reason"], r["host"]) for r in refused} == {
        ("deny", "source_unknown", None)}


def test_a_stranger_gets_no_dial_even_when_it_names_an_allowed_host(
    proxy: RunningPortcullis, trap: Trap
) -> None:
    with dial(proxy.explicit, source=STRANGER) as sock:
        sock.sendall(f"CONNECT trap.test:{trap.port} HTTP/1.1\r\n\r\n".encode())
        assert Answer(*read_head(sock)).status == 403
    assert trap.accepted == 0


def _admin_get(proxy: RunningPortcullis, path: str = "/healthz") -> int:
    url = f"http://{proxy.admin[0]}:{proxy.admin[1]}{path}"
    with urllib.request.urlopen(url, timeout=5) as answer:
        return int(answer.status)


@pytest.mark.parametrize("payload", [b"", b"GET /healthz HTTP/1.1\r\n", b"\x16\x03\x01junk"])
def test_admin_strangers_cannot_starve_the_probes(proxy: RunningPortcullis,
                                                  payload: bytes) -> None:
    with contextlib.ExitStack() as stack:
        for _ in range(48):  # more than the admin port's 32 slots
            sock = stack.enter_context(dial(proxy.admin, source=STRANGER))
            if payload:
                sock.sendall(payload)
        assert _admin_get(proxy) == 200
        assert _admin_get(proxy, "/readyz") == 200
    records = [r for r in proxy.records() if r.get("msg") == "admin client refused"]
    assert records and records[-1]["client"] == STRANGER


def test_admin_slow_head_is_cut_at_the_head_limit(proxy: RunningPortcullis) -> None:
    # An allowed client dripping a head gets 408 after the admin head limit (5 s),
    # however steadily it drips, and its slot comes back.
    with dial(proxy.admin, source=WORKER) as sock:
        started = time.monotonic()
        answer = b""
        with contextlib.suppress(OSError):
            for byte in b"GET /healthz HTTP/1.1\r\nX-Drip: " + b"a" * 200:
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
        answer = read_to_close(sock)
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert elapsed < 8
    assert _admin_get(proxy) == 200


# --- slow heads ------------------------------------------------------------------------


def _drip(sock: socket.socket, data: bytes, pause: float, limit: float) -> float:
    """Send `data` a byte at a time; the seconds until the proxy answered (or
    `limit`). The proxy then closes its side at once (its socket lingers a
    moment, proxy/lingering.py, so a dripping client does not see the close)."""
    elapsed = drip_until_answered(sock, data, pause, limit)
    read_to_close(sock)
    return elapsed


@pytest.mark.parametrize("pause", [0.2, 0.6])
@pytest.mark.parametrize("which", ["first", "second", "third"])
def test_every_head_on_a_connection_has_one_deadline(
    proxy: RunningPortcullis, echo: EchoServer, which: str, pause: float
) -> None:
    ahead = {"first": 0, "second": 1, "third": 2}[which]
    mark = len(proxy.records())
    with dial(proxy.explicit, source=WORKER) as sock:
        for _ in range(ahead):
            sock.sendall(_get(echo.port))
            assert Answer(*read_head(sock)).status == 200
            # The echo body follows its head; read it so the next head is the proxy's.
            with contextlib.suppress(TimeoutError):
                sock.settimeout(0.3)
                sock.recv(65536)
            sock.settimeout(10)
        slow = _get(echo.port, path="/" + "x" * 60)
        elapsed = _drip(sock, slow, pause, limit=4 * HEADER_TIMEOUT)
    assert elapsed < HEADER_TIMEOUT + 1.5, f"open {elapsed:.1f}s, limit {HEADER_TIMEOUT}s"
    timeouts = [r for r in _decisions_since(proxy, mark) if r["reason"] == "header_timeout"]
    assert len(timeouts) == 1 and timeouts[0]["decision"] == "deny"


def test_an_idle_kept_alive_connection_is_closed_quietly(
    proxy: RunningPortcullis, echo: EchoServer
) -> None:
    mark = len(proxy.records())
    with dial(proxy.explicit, source=WORKER) as sock:
        sock.sendall(_get(echo.port))
        assert Answer(*read_head(sock)).status == 200
        started = time.monotonic()
        read_to_close(sock)  # the body, then the close
        assert time.monotonic() - started < HEADER_TIMEOUT + 1.5
    assert not [r for r in _decisions_since(proxy, mark) if r["reason"] == "header_timeout"]


# --- pipelining --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("second", "status", "reason"),
    [
        (b"CONNECT trap.test:443 HTTP/1.1\r\nHost: trap.test:443\r\n\r\n", 400, "bad_request"),
        (b"CONNECT web.test:443 HTTP/1.1\r\nHost: web.test:443\r\n\r\n", 400, "bad_request"),
        (b"CONNECT 127.0.0.7:443 HTTP/1.1\r\n\r\n", 400, "bad_request"),
        (b"FROB http://trap.test/ HTTP/1.1\r\nHost: trap.test\r\n\r\n", 501, "bad_request"),
        (b"GET http://trap.test/ HTTP/1.1\r\nHost: trap.test\r\nX: a\r\n b\r\n\r\n", 400,
         "bad_request"),
        (b"GET http://trap.test/ HTTP/1.1\nHost: trap.test\n\n", 400, "bad_request"),
        (b"GET http://trap.test/ HTTP/1.1\r\nHost: trap.test\r\nX: a\x01b\r\n\r\n", 400,
         "bad_request"),
        (b"GET http://trap.test/ HTTP/1.1\r\nHost: evil.test\r\n\r\n", 400, "bad_request"),
        (b"GET http://trap.test/ HTTP/1.1\r\nHost: trap.test\r\nContent-Length: 1\r\n"
         b"Content-Length: 1\r\n\r\nx", 400, "bad_request"),
    ],
    ids=["connect-trap", "connect-allowed", "connect-ip", "unknown-method", "obs-fold",
         "bare-lf", "control-byte", "host-disagrees", "repeated-content-length"],
)
def test_a_bad_head_behind_a_plain_request_is_refused_before_any_dial(
    proxy: RunningPortcullis, echo: EchoServer, trap: Trap, second: bytes, status: int,
    reason: str,
) -> None:
    mark = len(proxy.records())
    before = trap.accepted
    got = responses(proxy.explicit, _get(echo.port) + second, answers=2, source=WORKER)
    assert len(got) == 2, got
    assert got[0].startswith(b"HTTP/1.1 200 ")
    assert got[1].startswith(f"HTTP/1.1 {status} ".encode()), got[1]
    assert trap.accepted == before
    records = _decisions_since(proxy, mark)
    assert [(r["decision"], r["reason"]) for r in records] == [
        ("allow", "rule_allow"), ("deny", reason)]
    log = proxy.records()
    assert not [r for r in log[mark:] if r.get("msg") == "handler failed"]


# --- Host bytes ------------------------------------------------------------------------


@pytest.mark.parametrize("host", [b"we\xadb.test", b"w\xe9b.test", b"web.test\xa0",
                                  b"\xefweb.test", b"web\xc2\xad.test"])
def test_a_host_with_bytes_outside_ascii_is_refused(
    proxy: RunningPortcullis, echo: EchoServer, host: bytes
) -> None:
    raw = (f"GET http://web.test:{echo.port}/ HTTP/1.1\r\nHost: ".encode() + host
           + f":{echo.port}\r\n\r\n".encode())
    [answer] = responses(proxy.explicit, raw, source=WORKER)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"outside ASCII" in answer


@pytest.mark.parametrize("host", ["WEB.TEST", "web.test.", "Web.Test."])
def test_the_host_forwarded_is_the_name_decided_on(
    proxy: RunningPortcullis, echo: EchoServer, host: str
) -> None:
    raw = (f"GET http://web.test:{echo.port}/ HTTP/1.1\r\nHost: {host}:{echo.port}\r\n"
           "Connection: close\r\n\r\n").encode()
    [answer] = responses(proxy.explicit, raw, source=WORKER)
    assert answer.startswith(b"HTTP/1.1 200 ")
    seen = dict(body_of(answer)["headers"])  # type: ignore[arg-type]
    assert seen["host"] == f"web.test:{echo.port}"


# --- trailers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "trailer",
    [b"Host: evil.test", b"Content-Length: 5", b"Transfer-Encoding: chunked",
     b"Authorization: Basic ZXZpbDpldmls", b"Connection: keep-alive",
     b"Proxy-Authorization: Basic eDp5", b"Cookie: session=stolen"],
)
def test_forbidden_trailer_fields_never_reach_the_upstream(
    proxy: RunningPortcullis, echo: EchoServer, trailer: bytes
) -> None:
    raw = (f"POST http://web.test:{echo.port}/upload HTTP/1.1\r\n"
           f"Host: web.test:{echo.port}\r\nTransfer-Encoding: chunked\r\n"
           "Connection: close\r\n\r\n").encode()
    raw += b"5\r\nhello\r\n0\r\n" + trailer + b"\r\nX-Checksum: abc\r\n\r\n"
    [answer] = responses(proxy.explicit, raw, source=WORKER)
    assert answer.startswith(b"HTTP/1.1 200 ")
    seen = body_of(answer)
    assert seen["body_len"] == 5
    names = [n.lower() for n, _ in seen["trailers"]]  # type: ignore[attr-defined]
    assert names == ["x-checksum"]


# --- records ---------------------------------------------------------------------------


@pytest.mark.parametrize("requests", [2, 4])
def test_every_relayed_request_records_what_was_dialled(
    proxy: RunningPortcullis, echo: EchoServer, requests: int
) -> None:
    mark = len(proxy.records())
    raw = b"".join(_get(echo.port, path=f"/{i}") for i in range(requests))
    got = responses(proxy.explicit, raw, answers=requests, source=WORKER)
    assert len(got) == requests and all(g.startswith(b"HTTP/1.1 200 ") for g in got)
    records = _decisions_since(proxy, mark)
    assert len(records) == requests
    for record in records:
        assert record["dialed"] == f"{ECHO_IP}:{echo.port}"
        assert record["resolved"] == [ECHO_IP]


@pytest.mark.parametrize("extra", ["", "Host: web.test:{port}\r\n", "Connection: keep-alive\r\n"])
def test_an_http10_request_is_forwarded_with_the_host_decided_on(
    proxy: RunningPortcullis, echo: EchoServer, extra: str
) -> None:
    # Found by the keep-alive fuzzer: h11 only sends HTTP/1.1, and the request
    # used to be written upstream in the client's version, failing the handler.
    raw = (f"GET http://web.test:{echo.port}/old HTTP/1.0\r\n"
           + extra.format(port=echo.port) + "\r\n").encode()
    [answer] = responses(proxy.explicit, raw, source=WORKER)
    assert answer.startswith(b"HTTP/1.1 200 ")
    seen = body_of(answer)
    assert dict(seen["headers"])["host"] == f"web.test:{echo.port}"  # type: ignore[arg-type]
    assert seen["target"] == "/old"


# --- tunnels to ports outside tls_ports ------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [b"GET / HTTP/1.1\r\nHost: anything.example\r\n\r\n",
     b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n",
     b"SSH-2.0-OpenSSH_9.2\r\n", b"\x00" * 32],
    ids=["origin-form", "absolute-form", "ssh", "zeros"],
)
def test_a_tunnel_to_a_non_tls_port_is_checked_unless_the_rule_says_raw(
    proxy: RunningPortcullis, echo: EchoServer, first: bytes
) -> None:
    mark = len(proxy.records())
    before = echo.accepted
    with dial(proxy.explicit, source=WORKER) as sock:
        sock.sendall(f"CONNECT web.test:{echo.port} HTTP/1.1\r\n\r\n".encode())
        assert Answer(*read_head(sock, exact=True)).status == 200
        sock.sendall(first)
        assert b"HTTP/1.1 200" not in read_to_close(sock)  # nothing came back from upstream
    [record] = _decisions_since(proxy, mark)
    assert (record["decision"], record["reason"]) == ("deny", "not_tls")
    # The upstream was dialled (before the 200) but not one byte reached it.
    # (The echo server's thread counts the accept a moment after the kernel
    # completed the connection.)
    deadline = time.monotonic() + 5
    while echo.accepted < before + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert echo.accepted == before + 1


def test_a_raw_rule_lets_a_tunnel_carry_plain_bytes(proxy: RunningPortcullis,
                                                    echo: EchoServer) -> None:
    with dial(proxy.explicit, source=WORKER) as sock:
        sock.sendall(f"CONNECT raw.test:{echo.port} HTTP/1.1\r\n\r\n".encode())
        assert Answer(*read_head(sock, exact=True)).status == 200
        sock.sendall(b"GET /inside HTTP/1.1\r\nHost: raw.test\r\nConnection: close\r\n\r\n")
        answer = read_to_close(sock)
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"/inside"' in answer


@pytest.mark.parametrize(("sni", "relayed"), [("web.test", True), ("evil.example", False),
                                              (None, False)])
def test_a_tls_tunnel_to_a_non_tls_port_has_its_sni_checked(
    proxy: RunningPortcullis, echo: EchoServer, sni: str | None, relayed: bool
) -> None:
    mark = len(proxy.records())
    with dial(proxy.explicit, source=WORKER) as sock:
        sock.sendall(f"CONNECT web.test:{echo.port} HTTP/1.1\r\n\r\n".encode())
        assert Answer(*read_head(sock, exact=True)).status == 200
        sock.sendall(real_hello(sni))
        read_to_close(sock)  # the echo server answers 400 to a hello, or the proxy closes
    [record] = _decisions_since(proxy, mark)
    expected = ("allow", "rule_allow") if relayed else (
        "deny", "sni_mismatch" if sni else "no_sni")
    assert (record["decision"], record["reason"]) == expected
