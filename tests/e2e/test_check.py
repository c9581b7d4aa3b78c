"""`portcullis check` against the real testbed, run as a user runs it (issue 6, item 1).

The testbed here lives on its own addresses (127.0.0.12 registry, 127.0.0.13
CDN) so these tests do not queue behind other sessions' testbeds. Failures are
real: Portcullis refusing a name, a port where nothing listens (RST), a listener
whose accept queue is full (the kernel drops the SYN, as a dropping firewall
does), a certificate for another name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.portcullis_proc import policy_for, run_portcullis
from tests.support.servers import full_listener
from tests.support.testbed import Testbed, start_testbed
from tests.support.token_registry import TokenRegistry, start_token_registry

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]

REGISTRY_IP, CDN_IP = "127.0.0.12", "127.0.0.13"
NOTHING_LISTENS = "127.0.0.16"  # connections get a RST
DROPS = "127.0.0.17"  # a listener with a full accept queue: SYNs vanish
US_SOUTH = {"us.icr.io", "registry.ng.bluemix.net", "dd0.icr.io", "dd2.icr.io",
            "dd0.us.icr.io"}


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    with start_testbed(tmp_path_factory.mktemp("checkbed"), registry_ip=REGISTRY_IP,
                       cdn_ip=CDN_IP) as testbed:
        yield testbed


@pytest.fixture(scope="module")
def token_registry(bed: Testbed, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[TokenRegistry]:
    with start_token_registry(bed, tmp_path_factory.mktemp("tokenreg")) as registry:
        yield registry


@pytest.fixture
def dropping_listener() -> Iterator[None]:
    with full_listener(DROPS, 443):
        yield


def check(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "portcullis.cli", "check", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})


def check_json(*args: str) -> tuple[int, dict[str, Any]]:
    result = check(*args, "--json")
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in report["names"]}


def step(row: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in row["steps"] if s["step"] == name)


def test_image_through_portcullis_names_the_refused_delivery_host(
    bed: Testbed, tmp_path: Path
) -> None:
    with run_portcullis(tmp_path / "p", policy_for(bed.hosts, ["us.icr.io"])) as proxy:
        code, report = check_json("--image", bed.image_ref, "--proxy", proxy.url,
                                  "--ca", str(bed.ca_pem))
        text = check("--image", bed.image_ref, "--proxy", proxy.url, "--ca", str(bed.ca_pem))
        denied = proxy.decisions("dd0.icr.io")
    assert code == 1 and report["ok"] is False
    by_name = rows(report)
    assert set(by_name) == {"us.icr.io", "dd0.icr.io"}
    assert [s["status"] for s in by_name["us.icr.io"]["steps"]] == ["skip", "ok", "ok", "ok"]
    connect = step(by_name["dd0.icr.io"], "connect")
    assert (connect["status"], connect["kind"], connect["reason"], connect["http_status"]) == (
        "fail", "proxy_refused", "no_rule", 403)
    assert [s["status"] for s in by_name["dd0.icr.io"]["steps"]][2:] == ["skip", "skip"]
    pull = report["pull"]
    assert [(p["step"], p["status"]) for p in pull] == [
        ("api", "ok"), ("manifest", "ok"), ("blob", "fail"), ("blob", "fail"), ("blob", "fail")]
    assert {p["host"] for p in pull[2:]} == {"dd0.icr.io"}
    assert all(p["hops"] == ["us.icr.io", "dd0.icr.io"] for p in pull[2:])
    line = "proxy refused dd0.icr.io:443 (reason no_rule): add dd0.icr.io or *.icr.io to the rule"
    assert [d["message"] for d in report["diagnoses"]] == [line]
    assert text.returncode == 1
    assert line in text.stdout and "blocked: 1 of 2 names fail, the pull failed" in text.stdout
    assert denied and {(r["decision"], r["reason"]) for r in denied} == {("deny", "no_rule")}


def test_image_through_portcullis_passes_when_the_delivery_host_is_allowed(
    bed: Testbed, tmp_path: Path
) -> None:
    policy = policy_for(bed.hosts, ["us.icr.io", "dd0.icr.io"])
    with run_portcullis(tmp_path / "p", policy) as proxy:
        result = check("--image", bed.image_ref, "--proxy", proxy.url, "--ca", str(bed.ca_pem))
        code, report = check_json("--image", bed.small_image_ref, "--proxy", proxy.url,
                                  "--ca", str(bed.ca_pem))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed (2 names, pull ok)" in result.stdout
    assert code == 0 and report["ok"] is True and report["diagnoses"] == []
    for row in report["names"]:
        assert [s["status"] for s in row["steps"]] == ["skip", "ok", "ok", "ok"], row
    blobs = [p for p in report["pull"] if p["step"] == "blob"]
    assert len(blobs) == len(bed.small_image.blob_digests)
    assert all(p["status"] == "ok" and p["hops"][-1] == "dd0.icr.io" for p in blobs)


def test_registry_region_through_portcullis_reports_refusals_with_their_reason(
    bed: Testbed, tmp_path: Path
) -> None:
    with run_portcullis(tmp_path / "p", policy_for(bed.hosts, ["us.icr.io"])) as proxy:
        code, report = check_json("--registry", "ibm", "--region", "us-south",
                                  "--proxy", proxy.url, "--ca", str(bed.ca_pem))
    assert code == 1
    by_name = rows(report)
    assert set(by_name) == US_SOUTH
    assert by_name["us.icr.io"]["ok"] is True
    for name in US_SOUTH - {"us.icr.io"}:
        connect = step(by_name[name], "connect")
        assert (connect["kind"], connect["reason"]) == ("proxy_refused", "no_rule"), name
    messages = {d["name"]: d["message"] for d in report["diagnoses"]}
    assert messages["dd2.icr.io"] == (
        "proxy refused dd2.icr.io:443 (reason no_rule): add dd2.icr.io or *.icr.io to the rule")
    assert messages["registry.ng.bluemix.net"].endswith("add registry.ng.bluemix.net to the rule")


def test_proxy_refusal_is_told_from_the_proxy_failing_to_reach_the_name(
    bed: Testbed, tmp_path: Path
) -> None:
    hosts = {**bed.hosts, **{n: [NOTHING_LISTENS] for n in ("dd2.icr.io", "dd4.icr.io",
                                                             "dd6.icr.io", "dd0.us.icr.io")}}
    policy = policy_for(hosts, ["*.icr.io"])
    with run_portcullis(tmp_path / "p", policy) as proxy:
        code, report = check_json("--registry", "ibm", "--region", "us-south",
                                  "--proxy", proxy.url, "--ca", str(bed.ca_pem))
    assert code == 1
    by_name = rows(report)
    assert by_name["us.icr.io"]["ok"] and by_name["dd0.icr.io"]["ok"]
    refused = step(by_name["registry.ng.bluemix.net"], "connect")
    assert (refused["kind"], refused["reason"]) == ("proxy_refused", "no_rule")
    upstream = step(by_name["dd2.icr.io"], "connect")
    assert (upstream["kind"], upstream["reason"], upstream["http_status"]) == (
        "proxy_upstream", "connect_failed", 502)
    message = next(d["message"] for d in report["diagnoses"] if d["name"] == "dd2.icr.io")
    assert message.startswith("the proxy could not reach dd2.icr.io:443")
    assert "a firewall between the proxy and dd2.icr.io blocks it" in message


def test_direct_check_passes_with_the_names_pinned(bed: Testbed) -> None:
    pins = ("--resolve", f"us.icr.io={REGISTRY_IP}", "--resolve", f"dd0.icr.io={CDN_IP}")
    code, report = check_json("--image", bed.image_ref, *pins, "--ca", str(bed.ca_pem))
    assert code == 0, report["diagnoses"]
    by_name = rows(report)
    assert by_name["us.icr.io"]["addresses"] == [REGISTRY_IP]
    assert step(by_name["dd0.icr.io"], "connect")["detail"] == f"{CDN_IP}:443"
    assert step(by_name["us.icr.io"], "http")["http_status"] == 200


def test_direct_check_tells_refused_from_dropped(bed: Testbed, dropping_listener: None) -> None:
    base = ("--image", bed.image_ref, "--resolve", f"us.icr.io={REGISTRY_IP}",
            "--ca", str(bed.ca_pem), "--timeout", "1")
    code, refused = check_json(*base, "--resolve", f"dd0.icr.io={NOTHING_LISTENS}")
    assert code == 1
    assert step(rows(refused)["dd0.icr.io"], "connect")["kind"] == "refused"
    assert [d["message"] for d in refused["diagnoses"]] == [
        "TCP to dd0.icr.io:443 was refused: a firewall rejects it, or nothing listens there;"
        " allow dd0.icr.io or *.icr.io"]
    result = check(*base, "--resolve", f"dd0.icr.io={DROPS}")
    assert result.returncode == 1
    assert ("TCP to dd0.icr.io:443 timed out: a firewall drops it; allow dd0.icr.io or *.icr.io"
            in result.stdout)


def test_direct_check_reports_a_certificate_for_another_name(bed: Testbed) -> None:
    # dd0.icr.io pinned to the registry, whose certificate does not cover it.
    code, report = check_json("--image", bed.image_ref, "--resolve", f"us.icr.io={REGISTRY_IP}",
                              "--resolve", f"dd0.icr.io={REGISTRY_IP}", "--ca", str(bed.ca_pem))
    assert code == 1
    tls = step(rows(report)["dd0.icr.io"], "tls")
    assert tls["kind"] == "tls_cert" and "dd0.icr.io" in tls["detail"]
    # Without --ca the testbed's private CA is unknown: every name fails at TLS.
    code, report = check_json("--image", bed.image_ref, "--resolve", f"us.icr.io={REGISTRY_IP}")
    assert code == 1
    assert step(rows(report)["us.icr.io"], "tls")["kind"] == "tls_cert"
    assert "pass --ca FILE" in report["diagnoses"][0]["message"]


def test_unreachable_proxy_gives_one_diagnosis(bed: Testbed) -> None:
    code, report = check_json("--registry", "ibm", "--region", "us-south",
                              "--proxy", f"http://{NOTHING_LISTENS}:3128", "--timeout", "2")
    assert code == 1
    assert {step(r, "connect")["kind"] for r in report["names"]} == {"proxy_unreachable"}
    assert len(report["diagnoses"]) == 1
    assert report["diagnoses"][0]["message"].startswith(
        f"cannot reach the proxy http://{NOTHING_LISTENS}:3128")


def test_usage_errors_exit_2() -> None:
    assert check().returncode == 2
    assert check("--region", "us-south").returncode == 2
    assert check("--registry", "ibm", "--region", "nowhere").returncode == 2
    assert check("--image", "us.icr.io/NS/App").returncode == 2
    assert check("--image", "a.io/x:1", "--proxy", "socks5://p:1").returncode == 2


def token_pins(registry: TokenRegistry) -> tuple[str, ...]:
    return ("--resolve", f"us.icr.io={registry.registry_ip}",
            "--resolve", f"auth.icr.io={registry.auth_ip}", "--resolve", f"dd0.icr.io={CDN_IP}",
            "--ca", str(registry.ca_bundle))


def test_bearer_realm_token_then_manifest_and_blobs(
    bed: Testbed, token_registry: TokenRegistry
) -> None:
    issued = len(token_registry.policy.issued)
    code, report = check_json("--image", bed.image_ref, *token_pins(token_registry))
    assert code == 0, report["diagnoses"]
    assert token_registry.policy.issued[issued:] == ["anonymous"]
    pull = report["pull"]
    assert [(p["step"], p["status"]) for p in pull] == [
        ("api", "ok"), ("token", "ok"), ("manifest", "ok"),
        ("blob", "ok"), ("blob", "ok"), ("blob", "ok")]
    assert pull[0]["detail"] == "401, token realm https://auth.icr.io/token"
    assert pull[1]["detail"] == "token issued anonymously"
    by_name = rows(report)
    assert by_name["auth.icr.io"]["roles"] == ["token"]
    assert step(by_name["us.icr.io"], "http")["detail"] == "401 Bearer https://auth.icr.io/token"


def test_token_host_refused_by_portcullis_is_named(
    bed: Testbed, token_registry: TokenRegistry, tmp_path: Path
) -> None:
    policy = policy_for(token_registry.hosts, ["us.icr.io", "dd0.icr.io"])
    with run_portcullis(tmp_path / "p", policy) as proxy:
        code, report = check_json("--image", bed.image_ref, "--proxy", proxy.url,
                                  "--ca", str(token_registry.ca_bundle))
    assert code == 1
    assert [d["message"] for d in report["diagnoses"]] == [
        "proxy refused auth.icr.io:443 (reason no_rule): add auth.icr.io or *.icr.io to the rule"]
    assert [(p["step"], p["status"], p.get("host")) for p in report["pull"]] == [
        ("api", "ok", None), ("token", "fail", "auth.icr.io")]


def test_token_service_wanting_credentials_is_not_a_network_failure(
    bed: Testbed, token_registry: TokenRegistry
) -> None:
    token_registry.policy.anonymous = False
    try:
        code, report = check_json("--image", bed.image_ref, *token_pins(token_registry))
        assert code == 1
        token = report["pull"][1]
        assert (token["step"], token["kind"], token["host"]) == ("token", "auth", "auth.icr.io")
        assert all(row["ok"] for row in report["names"])  # every name is reachable
        assert [d["message"] for d in report["diagnoses"]] == [
            "auth.icr.io wants credentials (401 Unauthorized); the network path works: pass "
            "--user USER:PASSWORD (IBM Cloud: --user iamapikey:APIKEY)"]
        code, report = check_json("--image", bed.image_ref, *token_pins(token_registry),
                                  "--user", "alice:s3cret")
        assert code == 0, report["diagnoses"]
        assert report["pull"][1]["detail"] == "token issued with --user"
        assert token_registry.policy.issued[-1] == "alice"
    finally:
        token_registry.policy.anonymous = True
