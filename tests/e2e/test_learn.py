"""`portcullis learn` end to end (issue 6, item 2): a real pull through Portcullis in
report mode, learn a policy from its decision log, enforce that policy: the same
pull succeeds and names (and clients) never seen are denied.

The testbed lives on 127.0.0.14 (registry) / 127.0.0.15 (CDN), away from the
shared default addresses.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.http import ask
from tests.support.portcullis_proc import RunningPortcullis, policy_for, run_portcullis
from tests.support.testbed import Testbed, start_testbed, verify_pulled

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    with start_testbed(tmp_path_factory.mktemp("learnbed"), registry_ip="127.0.0.14",
                       cdn_ip="127.0.0.15") as testbed:
        yield testbed


@pytest.fixture(scope="module")
def report_log(bed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The decision log of a real pull through Portcullis in report mode, with no rules."""
    workdir = tmp_path_factory.mktemp("report")
    with run_portcullis(workdir / "p", policy_for(bed.hosts, [], mode="report")) as proxy:
        result = bed.pull(workdir / "out", proxy=proxy.url)
        assert result.returncode == 0, result.stderr
    decisions = [r for r in proxy.records("decision")]
    assert {(r["decision"], r["reason"]) for r in decisions} == {("report", "no_rule")}
    return proxy.log_path


def learn(log: Path, out: Path, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "portcullis.cli", "learn", str(log), "-o", str(out), *args],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "learnt 1 source group, 1 rule, " in result.stderr
    learnt = yaml.safe_load(out.read_text())
    assert isinstance(learnt, dict)
    return learnt


def enforceable(bed: Testbed, learnt: dict[str, Any]) -> dict[str, Any]:
    """The learnt policy plus what a log cannot tell: where to listen, how to resolve.

    de.icr.io (on the registry's certificate) resolves to the registry too, so
    that no test name ever reaches a real resolver.
    """
    local = policy_for({**bed.hosts, "de.icr.io": bed.hosts["us.icr.io"]}, [])
    return {**learnt, **{k: local[k] for k in ("listen", "resolver", "limits")}}


def status_from(proxy: RunningPortcullis, target: str, source: str = "127.0.0.1") -> int | None:
    """The status the proxy answers `CONNECT target` from the client address `source`."""
    return ask(proxy.explicit, target, source=source).status


def test_learnt_policy_allows_the_same_pull_and_nothing_else(
    bed: Testbed, report_log: Path, tmp_path: Path
) -> None:
    learnt = learn(report_log, tmp_path / "learnt.yaml")
    assert learnt["mode"] == "enforce" and learnt["default"] == "deny"
    assert learnt["sources"] == {"clients": ["127.0.0.1/32"]}
    assert learnt["rules"] == [{"name": "learnt", "from": ["clients"],
                                "to": ["dd0.icr.io", "us.icr.io"], "ports": [443],
                                "action": "allow"}]
    with run_portcullis(tmp_path / "p", enforceable(bed, learnt)) as proxy:
        result = bed.pull(tmp_path / "out", proxy=proxy.url)
        assert result.returncode == 0, result.stderr
        verify_pulled(tmp_path / "out", bed.image)
        assert {(r["decision"], r["rule"]) for r in proxy.decisions()} == {("allow", "learnt")}
        # de.icr.io is on the registry's certificate but was never asked for.
        assert status_from(proxy, "de.icr.io:443") == 403
        assert status_from(proxy, "us.icr.io:80") == 403
        # 127.0.0.9 never pulled anything: it is in no learnt source group.
        assert status_from(proxy, "us.icr.io:443", "127.0.0.9") == 403
        denied = {(r["host"], r["port"], r["client"]): r["reason"]
                  for r in proxy.decisions() if r["decision"] == "deny"}
    # The stranger is refused at accept, before its request is read: no host.
    assert denied == {("de.icr.io", 443, "127.0.0.1"): "no_rule",
                      ("us.icr.io", 80, "127.0.0.1"): "port_not_allowed",
                      (None, 0, "127.0.0.9"): "source_unknown"}


def test_registry_aware_learning_allows_the_registry_wildcard(
    bed: Testbed, report_log: Path, tmp_path: Path
) -> None:
    learnt = learn(report_log, tmp_path / "learnt.yaml", "--registry-aware")
    assert learnt["rules"][0]["to"] == ["*.icr.io"]
    with run_portcullis(tmp_path / "p", enforceable(bed, learnt)) as proxy:
        result = bed.pull(tmp_path / "out", proxy=proxy.url)
        assert result.returncode == 0, result.stderr
        verify_pulled(tmp_path / "out", bed.image)
        # Another IBM delivery host is what the wildcard is for; another registry is not.
        assert status_from(proxy, "de.icr.io:443") == 200
        assert status_from(proxy, "quay.io:443") == 403
        quay = proxy.decisions("quay.io")
    assert [(r["decision"], r["reason"]) for r in quay] == [("deny", "no_rule")]
