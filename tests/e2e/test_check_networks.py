"""`portcullis check` in real networks (issue 15, part 5): NO_PROXY decides
per name whether it goes direct or through the proxy, as Go's httpproxy does
for containerd; and the proxy may be an `https://` one.

The registry testbed lives on its own addresses (127.0.0.32 registry,
127.0.0.33 CDN). Portcullis allows only `us.icr.io`, so `dd0.icr.io` (where
the registry redirects blobs) passes only when NO_PROXY sends it direct. The
https:// proxy is Portcullis's explicit listener behind HAProxy terminating
TLS with a certificate from a CA of its own (tests/support/tls_front.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.portcullis_proc import RunningPortcullis, policy_for, run_portcullis
from tests.support.testbed import Testbed, start_testbed
from tests.support.tls_front import TlsFront, tls_front

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]

REGISTRY_IP, CDN_IP = "127.0.0.32", "127.0.0.33"
FRONT_IP = "127.0.0.34"
NOTHING_LISTENS = "127.0.0.35"  # connections get a RST


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    with start_testbed(tmp_path_factory.mktemp("netbed"), registry_ip=REGISTRY_IP,
                       cdn_ip=CDN_IP) as testbed:
        yield testbed


@pytest.fixture(scope="module")
def proxy(bed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPortcullis]:
    with run_portcullis(tmp_path_factory.mktemp("p"), policy_for(bed.hosts, ["us.icr.io"])
                        ) as running:
        yield running


@pytest.fixture(scope="module")
def front(proxy: RunningPortcullis, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[TlsFront]:
    with tls_front(tmp_path_factory.mktemp("front"), proxy.explicit, FRONT_IP) as running:
        yield running


def check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "portcullis.cli", "check", *args],
                          capture_output=True, text=True, timeout=90,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", **(env or {})})


def report_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode in (0, 1), result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in report["names"]}


def step(row: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in row["steps"] if s["step"] == name)


def test_no_proxy_sends_the_blob_host_direct_and_says_so(bed: Testbed,
                                                         proxy: RunningPortcullis) -> None:
    args = ("--image", bed.image_ref, "--proxy", proxy.url, "--ca", str(bed.ca_pem),
            "--resolve", f"dd0.icr.io={CDN_IP}")
    result = check(*args, "--json", env={"NO_PROXY": "localhost,.svc,dd0.icr.io"})
    report = report_of(result)
    assert result.returncode == 0, report["diagnoses"]
    by_name = rows(report)
    assert by_name["us.icr.io"]["via"] == "proxy"
    assert step(by_name["us.icr.io"], "connect")["detail"] == "CONNECT 200"
    direct = by_name["dd0.icr.io"]
    assert (direct["via"], direct["no_proxy_match"]) == ("direct", "dd0.icr.io")
    assert direct["addresses"] == [CDN_IP]
    assert step(direct, "connect")["detail"] == f"{CDN_IP}:443"
    assert report["no_proxy"] == "localhost,.svc,dd0.icr.io"
    # Portcullis saw the registry and never the name that went around it.
    assert proxy.decisions("us.icr.io") and not proxy.decisions("dd0.icr.io")
    # The table has a VIA column; lowercase no_proxy is read when NO_PROXY is absent.
    text = check(*args, env={"no_proxy": "dd0.icr.io"})
    assert text.returncode == 0, text.stdout
    line = next(x for x in text.stdout.splitlines() if x.startswith("│ dd0.icr.io"))
    assert "direct (NO_PROXY dd0.icr.io)" in line and f"{CDN_IP}:443" in line
    assert "VIA" in text.stdout and "CONNECT / TCP 443" in text.stdout


def test_a_registry_name_in_no_proxy_is_named_when_the_direct_path_fails(
    bed: Testbed, proxy: RunningPortcullis
) -> None:
    result = check("--image", bed.image_ref, "--proxy", proxy.url, "--ca", str(bed.ca_pem),
                   "--resolve", f"us.icr.io={NOTHING_LISTENS}", "--json",
                   env={"NO_PROXY": ".icr.io"})
    report = report_of(result)
    assert result.returncode == 1
    row = rows(report)["us.icr.io"]
    assert (row["via"], row["no_proxy_match"]) == ("direct", ".icr.io")
    assert step(row, "connect")["kind"] == "refused"
    message = next(d["message"] for d in report["diagnoses"] if d["name"] == "us.icr.io")
    assert message.startswith("TCP to us.icr.io:443 was refused")
    assert message.endswith("(us.icr.io went direct: NO_PROXY entry '.icr.io')")
    # --no-proxy-for overrides the environment: an empty list sends everything
    # through the proxy, which allows us.icr.io.
    again = check("--image", bed.image_ref, "--proxy", proxy.url, "--ca", str(bed.ca_pem),
                  "--no-proxy-for", "", "--json", env={"NO_PROXY": ".icr.io"})
    assert rows(report_of(again))["us.icr.io"]["via"] == "proxy"


def test_https_proxy_carries_the_pull_and_its_refusals(
    bed: Testbed, proxy: RunningPortcullis, front: TlsFront
) -> None:
    before = len(proxy.decisions("us.icr.io"))
    result = check("--image", bed.image_ref, "--proxy", front.url, "--proxy-ca",
                   str(front.ca_pem), "--ca", str(bed.ca_pem), "--json")
    report = report_of(result)
    assert report["proxy"] == front.url
    by_name = rows(report)
    # The registry's TLS ran inside the proxy's: a valid certificate for us.icr.io
    # from the testbed CA, and the manifest read through it.
    assert by_name["us.icr.io"]["ok"] and by_name["us.icr.io"]["certificate"]["subject"]
    assert step(by_name["us.icr.io"], "http")["http_status"] == 200
    assert any(p["step"] == "manifest" and p["status"] == "ok" for p in report["pull"])
    # Portcullis's policy answers through the TLS front as it does in the clear.
    refused = step(by_name["dd0.icr.io"], "connect")
    assert (refused["kind"], refused["reason"], refused["http_status"]) == (
        "proxy_refused", "no_rule", 403)
    assert result.returncode == 1
    assert len(proxy.decisions("us.icr.io")) > before


def test_https_proxy_with_an_unknown_ca_is_a_proxy_tls_failure(
    bed: Testbed, front: TlsFront
) -> None:
    result = check("--registry", "ibm", "--region", "us-south", "--proxy", front.url, "--json")
    report = report_of(result)
    assert result.returncode == 1
    kinds = {step(row, "connect")["kind"] for row in report["names"]}
    assert kinds == {"proxy_tls"}
    detail = report["names"][0]["steps"][1]["detail"]
    assert detail == f"TLS to the proxy {front.url[8:]}: unable to get local issuer certificate"
    lines = [d["message"] for d in report["diagnoses"] if d["severity"] == "error"]
    assert len(lines) == 1 and "pass --proxy-ca FILE" in lines[0]


def test_https_proxy_usage_errors(front: TlsFront, tmp_path: Path) -> None:
    plain = check("--registry", "ibm", "--proxy", "http://127.0.0.1:9", "--proxy-ca",
                  str(front.ca_pem))
    assert plain.returncode == 2 and "--proxy-ca is for an https:// proxy" in plain.stderr
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    bad = check("--registry", "ibm", "--proxy", front.url, "--proxy-ca", str(junk))
    assert bad.returncode == 2 and "--proxy-ca" in bad.stderr and "not a PEM CA bundle" in \
        bad.stderr
    socks = check("--registry", "ibm", "--proxy", "socks5://127.0.0.1:1080")
    assert socks.returncode == 2 and "write http://HOST:PORT or https://HOST:PORT" in socks.stderr
