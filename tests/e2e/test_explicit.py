"""Explicit proxy mode end to end: skopeo behind Portcullis, a real registry that
redirects blobs to dd0.icr.io as IBM's delivery optimization does (issue 3, item 7)."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.http import read_to_close
from tests.support.portcullis_proc import RunningPortcullis, policy_for, run_portcullis
from tests.support.testbed import Testbed, verify_pulled

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]


def hosts_with(proxy: RunningPortcullis, decision: str) -> set[str]:
    return {r["host"] for r in proxy.decisions() if r["decision"] == decision}


def refused(proxy: RunningPortcullis, target: str, reason: str) -> dict[str, Any]:
    """`CONNECT target` is answered 403 for `reason`, the proxy closes, and the
    decision record says so; the record."""
    answer = proxy.ask(target, to_close=True)
    assert answer.status == 403
    assert f"reason: {reason}".encode() in answer.rest
    record = proxy.wait_for_log(lambda r: r.get("event") == "decision")
    assert (record["decision"], record["reason"]) == ("deny", reason)
    return record


def test_pull_succeeds_when_registry_and_delivery_host_are_allowed(
    testbed: Testbed, tmp_path: Path
) -> None:
    policy = policy_for(testbed.hosts, ["us.icr.io", "dd0.icr.io"])
    with run_portcullis(tmp_path / "p", policy) as proxy:
        result = testbed.pull(tmp_path / "out", proxy=proxy.url)
        assert result.returncode == 0, result.stderr
        verify_pulled(tmp_path / "out", testbed.image)
        assert hosts_with(proxy, "allow") == {"us.icr.io", "dd0.icr.io"}
        assert hosts_with(proxy, "deny") == set()
        for record in proxy.decisions():
            assert record["mode"] == "explicit"
            assert record["reason"] == "rule_allow" and record["rule"] == "registry"
            assert record["sni"] == record["host"]
            assert record["dialed"] in {f"{a}:443" for a in (*testbed.hosts["us.icr.io"],
                                                             *testbed.hosts["dd0.icr.io"])}
        closes = proxy.records("close")
        assert sum(c["bytes_down"] for c in closes) > testbed.image.total_size


def test_every_tunnel_of_repeated_pulls_is_closed_when_the_client_is_gone(
    testbed: Testbed, tmp_path: Path
) -> None:
    """Found under uvloop: bytes arriving with the upstream's reset (a TLS
    close_notify) were read, the reset behind them never was, and uvloop had
    closed the fd's watcher on the error: the tunnel stayed open until
    idle_timeout (and held up a drain). Every tunnel must close with its peers."""
    policy = policy_for(testbed.hosts, ["us.icr.io", "dd0.icr.io"])
    with run_portcullis(tmp_path / "p", policy) as proxy:
        for round_ in range(6):
            result = testbed.pull(tmp_path / f"out{round_}", proxy=proxy.url)
            assert result.returncode == 0, result.stderr
        deadline = time.monotonic() + 10
        while True:
            opened = {r["id"] for r in proxy.decisions() if r["decision"] == "allow"}
            open_now = opened - {r["id"] for r in proxy.records("close")}
            if not open_now or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert open_now == set(), [r for r in proxy.decisions() if r["id"] in open_now]
        url = f"http://{proxy.admin[0]}:{proxy.admin[1]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            assert 'portcullis_active_connections{mode="explicit"} 0.0' in answer.read().decode()


def test_only_registry_allowed_fails_on_the_delivery_host(
    testbed: Testbed, tmp_path: Path
) -> None:
    """The failure IBM's document warns about: the blob redirect to dd0.icr.io is dropped."""
    policy = policy_for(testbed.hosts, ["us.icr.io"])
    with run_portcullis(tmp_path / "p", policy) as proxy:
        result = testbed.pull(tmp_path / "out", proxy=proxy.url)
        assert result.returncode != 0
        denied = proxy.decisions("dd0.icr.io")
        assert denied and all(r["decision"] == "deny" for r in denied)
        assert {r["reason"] for r in denied} == {"no_rule"}
        assert all(r["dialed"] is None and r["resolved"] == [] for r in denied)
        assert "403" in result.stderr or "Forbidden" in result.stderr
        explained = subprocess.run(
            [sys.executable, "-m", "portcullis.cli", "explain", "-c", str(proxy.policy_path),
             "--from", "127.0.0.1", "--to", "dd0.icr.io:443", "--json"],
            capture_output=True, text=True, timeout=30,
        )
        assert explained.returncode == 1, explained.stderr
        data = json.loads(explained.stdout)
        assert (data["decision"], data["reason"]) == ("deny", "no_rule")
        admin = f"http://{proxy.admin[0]}:{proxy.admin[1]}"
        served = json.loads(urllib.request.urlopen(
            f"{admin}/explain?from=127.0.0.1&to=dd0.icr.io:443", timeout=5).read())
        assert (served["decision"], served["reason"]) == ("deny", "no_rule")
        allowed = json.loads(urllib.request.urlopen(
            f"{admin}/explain?from=127.0.0.1&to=us.icr.io", timeout=5).read())
        assert allowed["decision"] == "allow"
        assert [c["allowed"] for c in allowed["resolution"]["checks"]] == [True]
        metrics = urllib.request.urlopen(f"{admin}/metrics", timeout=5).read().decode()
        assert ('portcullis_decisions_total{decision="deny",reason="no_rule",rule=""}'
                in metrics)


def test_wildcard_icr_io_allows_the_pull(testbed: Testbed, tmp_path: Path) -> None:
    policy = policy_for(testbed.hosts, ["*.icr.io"])
    with run_portcullis(tmp_path / "p", policy) as proxy:
        result = testbed.pull(tmp_path / "out", proxy=proxy.url)
        assert result.returncode == 0, result.stderr
        verify_pulled(tmp_path / "out", testbed.image)
        assert hosts_with(proxy, "allow") == {"us.icr.io", "dd0.icr.io"}


def test_report_mode_lets_the_pull_through_and_logs_every_host(
    testbed: Testbed, tmp_path: Path
) -> None:
    policy = policy_for(testbed.hosts, [], mode="report")
    with run_portcullis(tmp_path / "p", policy) as proxy:
        result = testbed.pull(tmp_path / "out", proxy=proxy.url, ref=testbed.small_image_ref)
        assert result.returncode == 0, result.stderr
        verify_pulled(tmp_path / "out", testbed.small_image)
        decisions = proxy.decisions()
        assert {r["host"] for r in decisions} == {"us.icr.io", "dd0.icr.io"}
        assert {(r["decision"], r["reason"]) for r in decisions} == {("report", "no_rule")}


def test_client_outside_every_source_group_gets_403_and_nothing_is_dialled(
    testbed: Testbed, tmp_path: Path
) -> None:
    policy = policy_for(testbed.hosts, ["*.icr.io"], sources=("10.99.0.0/16",))
    with run_portcullis(tmp_path / "p", policy) as proxy:
        record = refused(proxy, "us.icr.io:443", "source_unknown")
        assert record["resolved"] == [] and record["dialed"] is None


@pytest.mark.parametrize("address", ["169.254.169.254", "127.0.0.1", "10.0.0.1"])
def test_allowed_name_resolving_to_a_forbidden_address_is_refused(
    testbed: Testbed, tmp_path: Path, address: str
) -> None:
    hosts = {**testbed.hosts, "us.icr.io": [address]}
    # allow_ranges admits only the real testbed, never the forbidden address.
    policy = policy_for(hosts, ["us.icr.io"], allow_ranges=tuple(
        f"{a}/32" for addrs in testbed.hosts.values() for a in addrs))
    with run_portcullis(tmp_path / "p", policy) as proxy:
        record = refused(proxy, "us.icr.io:443", "address_forbidden")
        assert record["resolved"] == [address] and record["dialed"] is None


def _pull_in_background(bed: Testbed, proxy: RunningPortcullis, dest: Path,
                        results: list[subprocess.CompletedProcess[str]]) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(bed.pull(dest, proxy=proxy.url)))
    thread.start()
    return thread


def both_hosts_policy(bed: Testbed) -> dict[str, Any]:
    return policy_for(bed.hosts, ["us.icr.io", "dd0.icr.io"])


def test_reload_during_a_pull_and_a_bad_reload(testbed: Testbed, tmp_path: Path) -> None:
    with run_portcullis(tmp_path / "p", both_hosts_policy(testbed)) as proxy:
        results: list[subprocess.CompletedProcess[str]] = []
        thread = _pull_in_background(testbed, proxy, tmp_path / "out", results)
        # A valid reload that removes dd0.icr.io while the pull runs: tunnels
        # already open keep going; new connections see the new policy.
        time.sleep(0.3)
        proxy.write_policy(policy_for(testbed.hosts, ["us.icr.io", "dd0.icr.io", "x.icr.io"]))
        proxy.reload()
        proxy.wait_for_log(lambda r: r.get("msg") == "policy reloaded")
        thread.join(120)
        assert results and results[0].returncode == 0, results[0].stderr
        verify_pulled(tmp_path / "out", testbed.image)
        # A bad file is rejected, counted, and the old policy keeps serving.
        proxy.write_policy("version: 1\nrules:\n  - name: r\n    from: [nope]\n    to: ['*']\n")
        proxy.reload()
        error = proxy.wait_for_log(lambda r: r.get("msg", "").startswith("reload rejected"))
        assert any("would match every name" in p for p in error["problems"])
        result = testbed.pull(tmp_path / "out2", proxy=proxy.url, ref=testbed.small_image_ref)
        assert result.returncode == 0, result.stderr
        metrics = urllib.request.urlopen(
            f"http://{proxy.admin[0]}:{proxy.admin[1]}/metrics", timeout=5
        ).read().decode()
        assert 'portcullis_policy_reloads_total{result="error"} 1.0' in metrics
        assert 'portcullis_policy_reloads_total{result="ok"} 1.0' in metrics


def test_policy_file_change_is_picked_up_without_a_signal(
    testbed: Testbed, tmp_path: Path
) -> None:
    with run_portcullis(tmp_path / "p", policy_for(testbed.hosts, ["us.icr.io"])) as proxy:
        assert proxy.ask("dd0.icr.io:443").status == 403
        proxy.write_policy(policy_for(testbed.hosts, ["us.icr.io", "dd0.icr.io"]))
        proxy.wait_for_log(lambda r: r.get("msg") == "policy reloaded", timeout=10)
        assert proxy.ask("dd0.icr.io:443").status == 200


def test_sigterm_drains_an_open_pull_then_exits_zero(testbed: Testbed, tmp_path: Path) -> None:
    with run_portcullis(tmp_path / "p", both_hosts_policy(testbed)) as proxy:
        # An open tunnel that the drain must let finish: send a request after SIGTERM.
        sock, answer = proxy.connect("us.icr.io:443")
        assert answer.status == 200
        context = ssl.create_default_context(cafile=str(testbed.ca_pem))
        tls = context.wrap_socket(sock, server_hostname="us.icr.io")
        proxy.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # Draining: readyz fails and new connections are not accepted.
        with pytest.raises((urllib.error.HTTPError, urllib.error.URLError, OSError)):
            urllib.request.urlopen(
                f"http://{proxy.admin[0]}:{proxy.admin[1]}/readyz", timeout=2
            ).read()
        tls.sendall(b"GET /v2/ HTTP/1.1\r\nHost: us.icr.io\r\nConnection: close\r\n\r\n")
        reply = read_to_close(tls, reset_ok=False)
        tls.close()
        assert reply.startswith(b"HTTP/1.1 200") or reply.startswith(b"HTTP/1.1 401"), reply[:80]
        assert proxy.proc.wait(timeout=30) == 0
