"""Inspection where the network has more in it (issue 14 with issue 15, parts
1-2): an inspecting rule whose connections go through a parent proxy (Squid,
http:// and https://), and an inspecting proxy behind a PROXY-protocol load
balancer (HAProxy, send-proxy-v2). skopeo pulls the allowed repository, the
other repository is refused inside the tunnel with DENIED, and the audit says
what was served, to whom, through what."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.balancer import Front, free_port, haproxy
from tests.support.inspection import InspectionCA, inspect_policy, make_ca
from tests.support.parent import https_port, parent_pki, squid_logged
from tests.support.portcullis_proc import (
    PORTCULLIS,
    RunningPortcullis,
    run_portcullis,
    wait_for_record,
)
from tests.support.testbed import Testbed, skopeo_pull, verify_pulled
from tests.support.testbed.procs import require_free
from tests.support.testbed.squid import ReferenceProxy, start_reference_proxy

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]

PARENT_IP = "127.0.0.1"
BALANCER_IP = "127.0.0.9"
FRONT_IP = "127.0.0.42"  # where redirected workers think us.icr.io is: HAProxy


@pytest.fixture(scope="module")
def ca(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> InspectionCA:
    return make_ca(tmp_path_factory.mktemp("chained-ca"), testbed)


@pytest.fixture(scope="module")
def parent_dir() -> Iterator[Path]:
    # Squid runs as `proxy`: its certificate may not live in pytest's 0700 tree.
    directory = Path(tempfile.mkdtemp(prefix="portcullis-chained-"))
    os.chmod(directory, 0o755)
    parent_pki(directory, PARENT_IP)
    yield directory
    shutil.rmtree(directory)


@pytest.fixture(scope="module")
def squid(testbed: Testbed, parent_dir: Path) -> Iterator[tuple[ReferenceProxy, str]]:
    """The parent, plain and over TLS; it refuses de.icr.io itself."""
    tls = (PARENT_IP, free_port())
    access = f"""\
{https_port(parent_dir, tls)}
acl clients src 127.0.0.0/8
acl tls_ports port 443
acl CONNECT method CONNECT
acl refused dstdomain de.icr.io
http_access deny CONNECT !tls_ports
http_access deny refused
http_access allow clients
http_access deny all
"""
    hosts = {**testbed.hosts, "de.icr.io": [testbed.registry_addr[0]]}
    with start_reference_proxy(hosts, access=access, timeout=15) as proxy:
        yield proxy, f"https://{tls[0]}:{tls[1]}"


def chained(testbed: Testbed, ca: InspectionCA, parent: dict[str, str], mode: str = "enforce"
            ) -> dict[str, Any]:
    """ns/small inspected on us.icr.io, dd0.icr.io by name, de.icr.io inspected
    too (the parent refuses it), all through `parent`."""
    policy = inspect_policy(testbed, ca, ["ns/small"], mode=mode,
                            extra={"upstream_proxy": parent})
    policy["rules"][0]["to"] = ["us.icr.io", "de.icr.io"]
    return policy


@pytest.fixture(scope="module", params=["http", "https"])
def through_parent(request: pytest.FixtureRequest, testbed: Testbed, ca: InspectionCA,
                   squid: tuple[ReferenceProxy, str], parent_dir: Path,
                   tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[tuple[RunningPortcullis, str]]:
    reference, https_url = squid
    url = reference.url if request.param == "http" else https_url
    parent = {"url": url, "ca": str(parent_dir / "ca.pem")} if request.param == "https" \
        else {"url": url}
    with run_portcullis(tmp_path_factory.mktemp(f"chained-{request.param}"),
                        chained(testbed, ca, parent)) as running:
        yield running, url


def manifest_audits(proxy: RunningPortcullis, repository: str) -> list[dict[str, Any]]:
    return [a for a in proxy.records("audit") if a.get("repository") == repository]


def test_an_inspected_pull_through_the_parent(
    through_parent: tuple[RunningPortcullis, str], squid: tuple[ReferenceProxy, str],
    testbed: Testbed, ca: InspectionCA, tmp_path: Path,
) -> None:
    proxy, parent = through_parent
    reference = squid[0]
    before = len(reference.access_log.read_text())
    result = skopeo_pull(testbed.small_image_ref, tmp_path / "small", ca_dir=ca.trusted_dir,
                         proxy=proxy.url, timeout=60)
    assert result.returncode == 0, result.stderr
    verify_pulled(tmp_path / "small", testbed.small_image)
    served = [a for a in manifest_audits(proxy, "ns/small") if a.get("digest")]
    assert served, proxy.records("audit")
    expected = testbed.small_image.manifest_digest
    assert {(a["digest"], a["registry_digest"]) for a in served} == {(expected, expected)}
    squid_logged(reference, "CONNECT us.icr.io:443", after=before)
    record = proxy.decisions("us.icr.io")[-1]
    assert (record["rule"], record["decision"], record["parent"]) == (
        "registry-images", "allow", parent)
    assert record["parent_status"] == 200 and record["resolved"] == []


def test_a_denied_repository_is_refused_inside_the_parents_tunnel(
    through_parent: tuple[RunningPortcullis, str], squid: tuple[ReferenceProxy, str],
    testbed: Testbed, ca: InspectionCA, tmp_path: Path,
) -> None:
    proxy, _ = through_parent
    reference = squid[0]
    registry_before = len(testbed.registry_log.read_text())
    result = skopeo_pull(testbed.image_ref, tmp_path / "app", ca_dir=ca.trusted_dir,
                         proxy=proxy.url, timeout=60)
    assert result.returncode != 0
    assert "denied: portcullis: repository ns/app is not allowed" in result.stderr, \
        result.stderr
    refused = proxy.wait_for_log(lambda r: r.get("event") == "audit"
                                 and r.get("repository") == "ns/app")
    assert (refused["decision"], refused["reason"], refused["status"]) == (
        "deny", "repository_denied", 403)
    # The parent carried a tunnel to the allowed name; the refused request never
    # went through it: the registry did not hear of ns/app.
    assert "/v2/ns/app/" not in testbed.registry_log.read_text()[registry_before:]
    # A name no rule allows never reaches the parent at all.
    answer = proxy.ask("quay.io:443", to_close=True)
    assert answer.status == 403 and answer.header("X-Portcullis-Reason") == "no_rule"
    assert "quay.io" not in reference.access_log.read_text()


def test_the_parents_refusal_of_an_inspected_name(
    through_parent: tuple[RunningPortcullis, str],
) -> None:
    proxy, parent = through_parent
    answer = proxy.ask("de.icr.io:443", to_close=True)
    assert answer.status == 502 and answer.header("X-Portcullis-Reason") == "parent_refused"
    record = proxy.wait_for_log(lambda r: r.get("host") == "de.icr.io")
    assert (record["decision"], record["reason"], record["rule"]) == (
        "deny", "parent_refused", "registry-images")
    assert (record["parent"], record["parent_status"]) == (parent, 403)


@pytest.fixture(scope="module")
def balanced(testbed: Testbed, ca: InspectionCA, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[RunningPortcullis, str]]:
    """Portcullis behind HAProxy (from BALANCER_IP, a stranger to the policy):
    only the real client, 127.0.0.1, is a worker."""
    policy = inspect_policy(testbed, ca, ["ns/small"])
    policy["sources"]["workers"] = ["127.0.0.1/32"]
    balancers = {"from": [f"{BALANCER_IP}/32"]}
    policy["listen"].update({"transparent": "127.0.0.1:0",
                             "proxy_protocol": {"explicit": balancers,
                                                "transparent": balancers}})
    require_free((FRONT_IP, 443), "HAProxy's transparent frontend")
    with run_portcullis(tmp_path_factory.mktemp("balanced-inspect"), policy) as running:
        listening = running.wait_for_log(lambda r: r.get("msg") == "listening")
        fronts = {
            "explicit": Front(("127.0.0.1", free_port()), running.explicit[1], "send-proxy-v2"),
            "transparent": Front((FRONT_IP, 443),
                                 int(str(listening["transparent"]).rpartition(":")[2]),
                                 "send-proxy-v2"),
        }
        with haproxy(fronts, BALANCER_IP, tmp_path_factory.mktemp("haproxy")):
            bind = fronts["explicit"].bind
            yield running, f"http://{bind[0]}:{bind[1]}"


def test_behind_a_balancer_the_audit_names_the_real_client(
    balanced: tuple[RunningPortcullis, str], testbed: Testbed, ca: InspectionCA,
    tmp_path: Path,
) -> None:
    proxy, front = balanced
    result = skopeo_pull(testbed.small_image_ref, tmp_path / "small", ca_dir=ca.trusted_dir,
                         proxy=front, timeout=60)
    assert result.returncode == 0, result.stderr
    verify_pulled(tmp_path / "small", testbed.small_image)
    result = skopeo_pull(testbed.image_ref, tmp_path / "app", ca_dir=ca.trusted_dir,
                         proxy=front, timeout=60)
    assert "repository ns/app is not allowed" in result.stderr, result.stderr
    audits = proxy.records("audit")
    assert {a["repository"] for a in audits if a.get("repository")} == {"ns/small", "ns/app"}
    for audit in audits:
        assert audit["client"] == "127.0.0.1", audit
        assert audit["balancer"].startswith(f"{BALANCER_IP}:"), audit
    served = [a for a in audits if a.get("digest")]
    assert served and all(a["digest"] == testbed.small_image.manifest_digest for a in served)
    record = proxy.decisions("us.icr.io")[-1]
    assert (record["client"], record["rule"]) == ("127.0.0.1", "registry-images")


def test_report_mode_explain_names_the_rule_and_parent_the_proxy_used(
    through_parent: tuple[RunningPortcullis, str], testbed: Testbed, ca: InspectionCA,
    parent_dir: Path,
) -> None:
    """A parent's refusal is a deny in report mode too (it is the parent's, not
    the policy's). explain stops before the dial, so it cannot know what the
    parent will answer: it says which rule and which parent, and those agree."""
    proxy, parent = through_parent
    before = yaml.safe_load(proxy.policy_path.read_text())
    proxy.use_policy({**before, "mode": "report"})
    try:
        answer = proxy.ask("de.icr.io:443", to_close=True)
        assert answer.status == 502 and answer.header("X-Portcullis-Reason") == "parent_refused"
        record = proxy.wait_for_log(lambda r: r.get("host") == "de.icr.io"
                                    and r["ts"] > answer_time(proxy))
        assert (record["decision"], record["reason"], record["parent"]) == (
            "deny", "parent_refused", parent)
        done = subprocess.run([*PORTCULLIS, "explain", "-c", str(proxy.policy_path), "--from",
                               "127.0.0.1", "--to", "de.icr.io", "--json"],
                              capture_output=True, text=True, timeout=60, check=False)
        explained = json.loads(done.stdout)
        query = urllib.parse.urlencode({"from": "127.0.0.1", "to": "de.icr.io:443"})
        with urllib.request.urlopen(f"http://{proxy.admin[0]}:{proxy.admin[1]}/explain?{query}",
                                    timeout=10) as reply:
            admin = json.loads(reply.read())
        for result in (explained, admin):
            assert (result["rule"], result["parent"]) == (record["rule"], parent)
            assert (result["decision"], result["reason"]) == ("allow", "rule_allow")
    finally:
        proxy.use_policy(before)


def answer_time(proxy: RunningPortcullis) -> float:
    """When the last reload was logged: records after it belong to this test."""
    return float(next(r["ts"] for r in reversed(proxy.records())
                      if r.get("msg") == "policy reloaded"))


@pytest.mark.parametrize("chain", [False, True], ids=["direct", "parent"])
def test_a_redirected_inspected_connection_through_the_balancer(
    balanced: tuple[RunningPortcullis, str], testbed: Testbed, ca: InspectionCA,
    squid: tuple[ReferenceProxy, str], chain: bool,
) -> None:
    """curl believes us.icr.io is at HAProxy's address (transparent mode): the
    name is the SNI, the client and the original destination the header's; and
    all of it once more with the connection chained through the parent."""
    proxy, _ = balanced
    before = yaml.safe_load(proxy.policy_path.read_text())
    if chain:
        proxy.use_policy({**before, "upstream_proxy": squid[0].url})
    try:
        record = redirected_manifest(proxy, ca)
    finally:
        proxy.use_policy(before)
    assert (record["decision"], record["rule"], record["client"]) == (
        "allow", "registry-images", "127.0.0.1")
    assert record["original_dst"] == f"{FRONT_IP}:443"
    assert record.get("parent") == (squid[0].url if chain else None)
    audit = proxy.wait_for_log(lambda r: r.get("event") == "audit" and r["id"] == record["id"])
    assert (audit["client"], audit["digest"]) == ("127.0.0.1", testbed.small_image.manifest_digest)
    assert audit["balancer"].startswith(f"{BALANCER_IP}:")


def redirected_manifest(proxy: RunningPortcullis, ca: InspectionCA) -> dict[str, Any]:
    """Fetch ns/small's manifest as a redirected worker; the connection's decision."""
    seen = len(proxy.decisions())
    done = subprocess.run(
        ["curl", "-sS", "--noproxy", "*", "--cacert", str(ca.cert), "--resolve",
         f"us.icr.io:443:{FRONT_IP}", "-H", "Accept: application/vnd.oci.image.manifest.v1+json",
         "-o", "/dev/null", "-w", "%{http_code}", "https://us.icr.io/v2/ns/small/manifests/1"],
        capture_output=True, text=True, timeout=30, check=False)
    assert done.stdout == "200", done.stderr
    return wait_for_record(lambda: proxy.decisions()[seen:],
                           lambda r: r.get("mode") == "transparent")
