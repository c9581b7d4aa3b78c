"""Portcullis behind HAProxy (Debian's) sending the PROXY protocol header:
`send-proxy-v2` and `send-proxy` (v1) in front of the explicit listener, and
`send-proxy-v2` in front of the transparent listener, HAProxy connecting from
127.0.0.9 (the balancer). Only 127.0.0.1 is a worker, so a pull that succeeds
was decided on the real client; the balancer's own address would be a
stranger. Connections that do not come from the balancer, or come without
the header, are refused and logged; a header naming a stranger is refused
after it is read."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.balancer import Front, free_port
from tests.support.balancer import haproxy as haproxy_running
from tests.support.http import Answer, ask, dial, read_head
from tests.support.portcullis_proc import RunningPortcullis, policy_for, run_portcullis
from tests.support.testbed import Testbed, verify_pulled
from tests.support.testbed.procs import require_free
from tests.support.testbed.squid import ReferenceProxy

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]

BALANCER_IP = "127.0.0.9"
# Where redirected workers think the registry is: HAProxy's transparent frontend.
FRONT_IP = "127.0.0.41"


def balanced_policy(testbed: Testbed, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    balancers = {"from": [f"{BALANCER_IP}/32"]}
    policy = policy_for(testbed.hosts, ["us.icr.io", "dd0.icr.io"],
                        sources=("127.0.0.1/32",), extra=extra)
    policy["listen"].update({"transparent": "127.0.0.1:0", "proxy_protocol": {
        "explicit": balancers, "transparent": balancers}})
    return policy


@pytest.fixture(scope="module")
def proxy(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[RunningPortcullis]:
    with run_portcullis(tmp_path_factory.mktemp("balanced"), balanced_policy(testbed)) as running:
        yield running


def listening(proxy: RunningPortcullis, mode: str) -> int:
    record = next(r for r in proxy.records() if r.get("msg") == "listening")
    return int(str(record[mode]).rpartition(":")[2])


@pytest.fixture(scope="module")
def haproxy(proxy: RunningPortcullis, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, tuple[str, int]]]:
    """HAProxy in TCP mode: frontends -> Portcullis with the header, from BALANCER_IP."""
    require_free((FRONT_IP, 443), "HAProxy's transparent frontend")
    fronts = {
        "v2": Front(("127.0.0.1", free_port()), listening(proxy, "explicit"), "send-proxy-v2"),
        "v1": Front(("127.0.0.1", free_port()), listening(proxy, "explicit"), "send-proxy"),
        "transparent": Front((FRONT_IP, 443), listening(proxy, "transparent"),
                             "send-proxy-v2"),
    }
    with haproxy_running(fronts, BALANCER_IP, tmp_path_factory.mktemp("haproxy")):
        yield {name: front.bind for name, front in fronts.items()}


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_a_pull_through_the_balancer_is_decided_on_the_real_client(
    testbed: Testbed, proxy: RunningPortcullis, haproxy: dict[str, tuple[str, int]],
    tmp_path: Path, version: str,
) -> None:
    host, port = haproxy[version]
    before = len(proxy.decisions())
    result = testbed.pull(tmp_path / "out", proxy=f"http://{host}:{port}",
                          ref=testbed.small_image_ref if version == "v1" else None)
    assert result.returncode == 0, result.stderr
    verify_pulled(tmp_path / "out", testbed.small_image if version == "v1" else testbed.image)
    records = proxy.decisions()[before:]
    assert {r["host"] for r in records} == {"us.icr.io", "dd0.icr.io"}
    for record in records:
        assert (record["decision"], record["client"]) == ("allow", "127.0.0.1")
        assert record["balancer"].startswith(f"{BALANCER_IP}:")


def test_a_redirected_tls_connection_through_the_balancer(
    testbed: Testbed, proxy: RunningPortcullis, haproxy: dict[str, tuple[str, int]]
) -> None:
    """curl believes it talks to us.icr.io at HAProxy's address; Portcullis takes
    the name from the SNI and the original destination from the header."""
    result = subprocess.run(
        ["curl", "-sS", "--noproxy", "*", "--cacert", str(testbed.ca_pem),
         "--resolve", f"us.icr.io:443:{FRONT_IP}", "-o", "/dev/null", "-w", "%{http_code}",
         "https://us.icr.io/v2/"], capture_output=True, text=True, timeout=30)
    assert result.stdout == "200", result.stderr
    record = proxy.wait_for_log(lambda r: r.get("mode") == "transparent"
                                and r.get("event") == "decision")
    assert (record["decision"], record["host"], record["client"]) == (
        "allow", "us.icr.io", "127.0.0.1")
    assert record["original_dst"] == f"{FRONT_IP}:443"
    assert record["balancer"].startswith(f"{BALANCER_IP}:")


def test_a_client_that_is_not_a_balancer_is_refused_at_accept(proxy: RunningPortcullis) -> None:
    answer = ask(proxy.explicit, "us.icr.io:443", to_close=True)
    assert answer.status == 403 and answer.header("X-Portcullis-Reason") == "balancer_unknown"
    record = proxy.wait_for_log(lambda r: r.get("reason") == "balancer_unknown")
    assert record["client"] == "127.0.0.1" and record["decision"] == "deny"


def test_the_balancer_without_a_header_is_refused(proxy: RunningPortcullis) -> None:
    answer = ask(proxy.explicit, "us.icr.io:443", source=BALANCER_IP, to_close=True)
    assert answer.status == 400 and answer.header("X-Portcullis-Reason") == "proxy_header"
    assert b"no PROXY protocol header" in answer.rest
    record = proxy.wait_for_log(lambda r: r.get("reason") == "proxy_header")
    assert record["client"] == BALANCER_IP and record["balancer"].startswith(BALANCER_IP)
    proxy.wait_for_log(lambda r: r.get("msg") == "PROXY protocol header refused")


def test_a_header_naming_a_stranger_is_refused_after_it_is_read(
    proxy: RunningPortcullis
) -> None:
    with dial(proxy.explicit, source=BALANCER_IP) as sock:
        sock.sendall(b"PROXY TCP4 192.0.2.50 127.0.0.1 40000 3128\r\n"
                     b"CONNECT us.icr.io:443 HTTP/1.1\r\nHost: us.icr.io:443\r\n\r\n")
        answer = Answer(*read_head(sock))
    assert answer.status == 403 and answer.header("X-Portcullis-Reason") == "source_unknown"
    record = proxy.wait_for_log(lambda r: r.get("client") == "192.0.2.50")
    assert record["reason"] == "source_unknown" and record["balancer"].startswith(BALANCER_IP)


def test_metrics_count_the_refusals_by_reason(proxy: RunningPortcullis) -> None:
    ask(proxy.explicit, "us.icr.io:443", to_close=True)
    host, port = proxy.admin
    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
    assert 'reason="balancer_unknown"' in text


def test_a_redirected_connection_through_the_balancer_and_a_parent(
    testbed: Testbed, proxy: RunningPortcullis, haproxy: dict[str, tuple[str, int]],
    reference_proxy: ReferenceProxy,
) -> None:
    """Transparent in, parent out: HAProxy -> Portcullis -> Squid -> registry."""
    proxy.use_policy(balanced_policy(testbed, {"upstream_proxy": reference_proxy.url}))
    try:
        result = subprocess.run(
            ["curl", "-sS", "--noproxy", "*", "--cacert", str(testbed.ca_pem),
             "--resolve", f"us.icr.io:443:{FRONT_IP}", "-o", "/dev/null", "-w",
             "%{http_code}", "https://us.icr.io/v2/"], capture_output=True, text=True,
            timeout=30)
        assert result.stdout == "200", result.stderr
        record = proxy.wait_for_log(lambda r: r.get("mode") == "transparent"
                                    and r.get("parent") == reference_proxy.url)
        assert (record["decision"], record["parent_status"], record["resolved"]) == (
            "allow", 200, [])
    finally:
        proxy.use_policy(balanced_policy(testbed))


def test_not_required_serves_direct_clients_as_themselves(testbed: Testbed, tmp_path: Path
                                                          ) -> None:
    policy = balanced_policy(testbed)
    policy["listen"]["proxy_protocol"]["explicit"]["required"] = False
    with run_portcullis(tmp_path, policy) as running:
        assert ask(running.explicit, "us.icr.io:443").status == 200
        record = running.wait_for_log(lambda r: r.get("host") == "us.icr.io")
        assert record["client"] == "127.0.0.1" and "balancer" not in record
        # The balancer's connections must still carry the header.
        answer = ask(running.explicit, "us.icr.io:443", source=BALANCER_IP, to_close=True)
        assert answer.status == 400 and answer.header("X-Portcullis-Reason") == "proxy_header"
