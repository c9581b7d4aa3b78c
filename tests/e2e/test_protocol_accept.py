"""The protocol-from-accept experiment (PORTCULLIS_PROTOCOL_ACCEPT=1,
proxy/accepted.py): a real skopeo pull through it, and its refusals, with the
same decision and close records the default path writes."""

from __future__ import annotations

import socket
import struct
import time
import urllib.request
from pathlib import Path

import pytest

from portcullis.proxy.accepted import SWITCH
from tests.support.http import read_head, read_to_close
from tests.support.portcullis_proc import RunningPortcullis, policy_for, run_portcullis
from tests.support.testbed import Testbed, verify_pulled
from tests.support.tls_hellos import real_hello

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]


@pytest.fixture
def switched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SWITCH, "1")  # run_portcullis's process inherits the environment


def closes_of(proxy: RunningPortcullis, ids: set[str]) -> list[dict[str, object]]:
    deadline = time.monotonic() + 10
    while True:
        closes = [r for r in proxy.records("close") if r["id"] in ids]
        if len(closes) == len(ids) or time.monotonic() > deadline:
            return closes
        time.sleep(0.1)


def test_a_pull_through_the_protocol_path_is_relayed_and_recorded(
    switched: None, testbed: Testbed, tmp_path: Path
) -> None:
    policy = policy_for(testbed.hosts, ["us.icr.io", "dd0.icr.io"])
    with run_portcullis(tmp_path / "p", policy) as proxy:
        # Only the protocol path answers plain HTTP with 501: the switch took hold.
        with socket.create_connection(proxy.explicit) as sock:
            sock.sendall(b"GET http://us.icr.io/v2/ HTTP/1.1\r\nHost: us.icr.io\r\n\r\n")
            assert read_to_close(sock).startswith(b"HTTP/1.1 501 ")
        result = testbed.pull(tmp_path / "out", proxy=proxy.url)
        assert result.returncode == 0, result.stderr
        verify_pulled(tmp_path / "out", testbed.image)
        allowed = [r for r in proxy.decisions() if r["decision"] == "allow"]
        assert {r["host"] for r in allowed} == {"us.icr.io", "dd0.icr.io"}
        for record in allowed:
            assert record["mode"] == "explicit" and record["reason"] == "rule_allow"
            assert record["sni"] == record["host"] and record["rule"] == "registry"
            assert record["dialed"] in {f"{a}:443" for a in (*testbed.hosts["us.icr.io"],
                                                             *testbed.hosts["dd0.icr.io"])}
        closes = closes_of(proxy, {r["id"] for r in allowed})
        assert len(closes) == len(allowed)  # every tunnel closed with its peers
        assert sum(int(str(c["bytes_down"])) for c in closes) > testbed.image.total_size
        assert all(int(str(c["bytes_up"])) > 0 for c in closes)
        host, port = proxy.admin
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as answer:
            metrics = answer.read().decode()
        counted = (f'portcullis_decisions_total{{decision="allow",reason="rule_allow",'
                   f'rule="registry"}} {float(len(allowed))}')
        assert counted in metrics
        assert 'portcullis_active_connections{mode="explicit"} 0.0' in metrics
        down = sum(int(str(c["bytes_down"])) for c in closes)
        line = next(x for x in metrics.splitlines()
                    if x.startswith('portcullis_bytes_total{direction="down"}'))
        assert float(line.split()[-1]) == down


def test_the_protocol_path_refuses_as_the_default_path_does(
    switched: None, testbed: Testbed, tmp_path: Path
) -> None:
    policy = policy_for(testbed.hosts, ["us.icr.io"])
    with run_portcullis(tmp_path / "p", policy) as proxy:
        answer = proxy.ask("evil.example:443", to_close=True)
        assert answer.status == 403 and b"reason: no_rule" in answer.rest
        record = proxy.wait_for_log(lambda r: r.get("host") == "evil.example")
        assert (record["decision"], record["reason"]) == ("deny", "no_rule")

        # Allowed by name, then a ClientHello for another name: closed, recorded.
        with socket.create_connection(proxy.explicit) as sock:
            sock.sendall(b"CONNECT us.icr.io:443 HTTP/1.1\r\nHost: us.icr.io:443\r\n\r\n")
            head, _ = read_head(sock, exact=True)
            assert head.startswith(b"HTTP/1.1 200 ")
            sock.sendall(real_hello("dd0.icr.io"))
            assert read_to_close(sock) == b""
        record = proxy.wait_for_log(
            lambda r: r.get("event") == "decision" and r.get("sni") == "dd0.icr.io")
        assert (record["decision"], record["reason"]) == ("deny", "sni_mismatch")

        # A head that never ends: 408 at the header timeout, recorded.
        with socket.create_connection(proxy.explicit) as sock:
            sock.sendall(b"CONNECT us.icr.io:443 HTTP/1.1\r\n")
            assert read_to_close(sock).startswith(b"HTTP/1.1 408 ")
        record = proxy.wait_for_log(lambda r: r.get("reason") == "header_timeout")
        assert record["decision"] == "deny"


def open_tunnel(proxy: RunningPortcullis, host: str) -> socket.socket:
    """A tunnel to `host`:443 through the proxy, its ClientHello sent."""
    sock = socket.create_connection(proxy.explicit)
    sock.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
    head, _ = read_head(sock, exact=True)
    assert head.startswith(b"HTTP/1.1 200 ")
    sock.sendall(real_hello(host))
    assert sock.recv(5)[:1] == b"\x16"  # the registry's ServerHello came back through
    return sock


def test_protocol_tunnels_end_by_reset_and_by_idle_timeout_with_their_reason(
    switched: None, testbed: Testbed, tmp_path: Path
) -> None:
    policy = policy_for(testbed.hosts, ["us.icr.io"])
    policy["limits"]["idle_timeout"] = 1
    with run_portcullis(tmp_path / "p", policy) as proxy:
        sock = open_tunnel(proxy, "us.icr.io")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset
        record = proxy.wait_for_log(lambda r: r.get("event") == "close")
        assert record["close_reason"] == "client_reset" and record["bytes_down"] > 0

        with open_tunnel(proxy, "us.icr.io") as idle:
            started = time.monotonic()
            idle.settimeout(10)
            read_to_close(idle)  # the proxy ends the quiet tunnel
            assert time.monotonic() - started < 5
        record = proxy.wait_for_log(
            lambda r: r.get("event") == "close" and r.get("close_reason") != "client_reset")
        assert record["close_reason"] == "idle_timeout"
