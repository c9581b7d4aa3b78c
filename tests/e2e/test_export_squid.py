"""Squid configured from `portcullis export --format squid` enforces the policy
on the real testbed: skopeo pulls through it for the allowed names (registry and
the dd0.icr.io blob redirect), a denied name and the apex of an allowed wildcard
(which Squid's own `.icr.io` would let through) are refused."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from portcullis.config import parse_policy
from tests.support.export_cases import expected
from tests.support.http import ask
from tests.support.testbed import Testbed, skopeo_pull, start_testbed, verify_pulled
from tests.support.testbed.squid import start_reference_proxy

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]

# Our own testbed addresses, so this module runs next to other sessions' testbeds.
REGISTRY_IP = "127.0.0.22"
CDN_IP = "127.0.0.23"
APEX_CLIENT = "127.0.0.77"

POLICY = f"""\
version: 1
sources:
  workers: [127.0.0.0/8]
  apex-client: [{APEX_CLIENT}/32]
rules:
  - name: apex-for-one-client
    from: [apex-client]
    to: [icr.io]
  - name: not-germany
    from: [workers]
    to: [de.icr.io]
    action: deny
  - name: ibm
    from: [workers]
    to: ["*.icr.io"]
    ports: [443]
default: deny
"""


@dataclass(frozen=True)
class ExportedSquid:
    url: str
    address: tuple[str, int]
    access_log: Path
    export: str


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    with start_testbed(tmp_path_factory.mktemp("export-testbed"),
                       registry_ip=REGISTRY_IP, cdn_ip=CDN_IP) as testbed:
        yield testbed


@pytest.fixture(scope="module")
def squid(bed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExportedSquid]:
    policy_path = tmp_path_factory.mktemp("export-policy") / "policy.yaml"
    policy_path.write_text(POLICY)
    exported = subprocess.run(
        [sys.executable, "-m", "portcullis.cli", "export", "-c", str(policy_path),
         "--format", "squid"], capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    hosts = {"us.icr.io": [REGISTRY_IP], "de.icr.io": [REGISTRY_IP], "icr.io": [REGISTRY_IP],
             "dd0.icr.io": [CDN_IP]}
    with start_reference_proxy(hosts, timeout=15, access=exported) as proxy:
        yield ExportedSquid(proxy.url, proxy.address, proxy.access_log, exported)


def test_the_export_is_what_squid_runs(squid: ExportedSquid) -> None:
    assert "acl portcullis_r3_apex dstdomain -n icr.io" in squid.export
    assert squid.export.rstrip().endswith("http_access deny all")


def test_allowed_pull_passes_through_the_exported_squid(
    bed: Testbed, squid: ExportedSquid, tmp_path: Path
) -> None:
    before = len(squid.access_log.read_text())
    result = skopeo_pull(bed.image_ref, tmp_path / "out", ca_dir=bed.ca_dir, proxy=squid.url,
                         timeout=180)
    assert result.returncode == 0, result.stderr
    verify_pulled(tmp_path / "out", bed.image)
    log = squid.access_log.read_text()[before:]
    # The registry and the redirected blob host both went through, tunnelled.
    assert "CONNECT us.icr.io:443" in log and "CONNECT dd0.icr.io:443" in log
    assert "TCP_DENIED" not in log


@pytest.mark.parametrize(("target", "client"), [
    ("us.icr.io:443", "127.0.0.1"),
    ("dd0.icr.io:443", "127.0.0.1"),
    ("de.icr.io:443", "127.0.0.1"),     # denied by name, before the wildcard allows it
    ("icr.io:443", "127.0.0.1"),        # the apex: Squid's .icr.io would match it
    ("icr.io:443", APEX_CLIENT),        # the one client the policy lets reach the apex
    ("us.icr.io:8443", "127.0.0.1"),    # a port no rule allows
])
def test_squid_answers_each_connect_as_portcullis_decides(
    squid: ExportedSquid, target: str, client: str
) -> None:
    host, _, port = target.rpartition(":")
    want = expected(parse_policy(POLICY), client, host, int(port))
    status = ask(squid.address, target, source=client, timeout=15).status_line
    if want:
        assert status == b"HTTP/1.1 200 Connection established", status
    else:
        assert status.startswith(b"HTTP/1.1 403 "), status


def test_denied_names_fail_a_real_pull(bed: Testbed, squid: ExportedSquid, tmp_path: Path) -> None:
    for ref in ("de.icr.io/ns/small:1", "icr.io/ns/small:1"):
        result = skopeo_pull(ref, tmp_path / ref.split("/")[0], ca_dir=bed.ca_dir,
                             proxy=squid.url, timeout=120)
        assert result.returncode != 0, ref
        assert "403" in result.stderr or "Forbidden" in result.stderr, result.stderr
    denied = [line for line in squid.access_log.read_text().splitlines() if "TCP_DENIED" in line]
    assert any("de.icr.io:443" in line for line in denied)
    assert any(" icr.io:443" in line for line in denied)
