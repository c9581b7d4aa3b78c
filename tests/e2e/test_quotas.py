"""Per-group quotas end to end (issue 15, part 4): one client floods the proxy
from its own address, is answered 503 (over its tunnels) and 429 (over its
rate), and another group's skopeo pulls go on as if it were not there."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support.http import connect, dial, read_to_close
from tests.support.portcullis_proc import RunningPortcullis, policy_for, run_portcullis
from tests.support.testbed import Testbed, verify_pulled

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]

NOISY = "127.0.0.9"
WORKER = "127.0.0.1"  # skopeo's address: it dials the proxy on 127.0.0.1


def flood(proxy: RunningPortcullis, stop: threading.Event, seen: Counter[str],
          lock: threading.Lock) -> None:
    """CONNECT as fast as answers come, holding each tunnel a moment."""
    while not stop.is_set():
        try:
            sock, answer = connect(proxy.explicit, "us.icr.io:443", source=NOISY, timeout=5)
        except OSError:
            continue
        with sock:
            reason = answer.header("X-Portcullis-Reason") or ""
            with lock:
                seen[f"{answer.status} {reason}".strip()] += 1
            if answer.status == 200:
                time.sleep(0.3)


def scrape(proxy: RunningPortcullis) -> str:
    with dial(proxy.admin) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return read_to_close(sock).decode()


def test_a_flooding_client_is_limited_and_another_groups_pulls_are_unaffected(
    testbed: Testbed, tmp_path: Path
) -> None:
    policy = policy_for(testbed.hosts, ["us.icr.io", "dd0.icr.io"], extra={
        "sources": {"noisy": [f"{NOISY}/32"], "workers": [f"{WORKER}/32"]},
        "quotas": {"noisy": {"max_tunnels": 3, "rate": 5, "burst": 5},
                   # Its own quota, roomy enough for a pull: the noisy group's flood
                   # must not spend any of it.
                   "workers": {"max_tunnels": 20, "rate": 50}},
    })
    policy["rules"][0]["from"] = ["noisy", "workers"]
    with run_portcullis(tmp_path / "p", policy) as proxy:
        stop, lock, seen = threading.Event(), threading.Lock(), Counter[str]()
        threads = [threading.Thread(target=flood, args=(proxy, stop, seen, lock))
                   for _ in range(6)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1)  # the flood is at its limits before the pulls start
            for round_ in range(2):
                result = testbed.pull(tmp_path / f"out{round_}", proxy=proxy.url)
                assert result.returncode == 0, result.stderr
                verify_pulled(tmp_path / f"out{round_}", testbed.image)
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
        assert seen["200"] > 0, seen
        assert seen["503 over_capacity"] > 0, seen
        assert seen["429 rate_limited"] > 0, seen
        assert set(seen) == {"200", "503 over_capacity", "429 rate_limited"}, seen

        decisions = proxy.decisions()
        worker = [r for r in decisions if r["client"] == WORKER]
        assert worker and all(r["decision"] == "allow" for r in worker), [
            r for r in worker if r["decision"] != "allow"]
        noisy = Counter(r["reason"] for r in decisions if r["client"] == NOISY)
        assert noisy["rate_limited"] == seen["429 rate_limited"]
        assert noisy["over_capacity"] == seen["503 over_capacity"]

        # Every tunnel the flood held was given back: three at once get through again.
        time.sleep(1)
        held = [connect(proxy.explicit, "us.icr.io:443", source=NOISY) for _ in range(3)]
        try:
            assert [answer.status for _, answer in held] == [200, 200, 200]
        finally:
            for sock, _ in held:
                sock.close()

        metrics = scrape(proxy)
        for limit, status in (("rate", "429 rate_limited"), ("tunnels", "503 over_capacity")):
            line = f'portcullis_quota_refusals_total{{group="noisy",limit="{limit}"}}'
            assert f"{line} {float(seen[status])}" in metrics, metrics
        assert 'group="workers"' not in metrics
