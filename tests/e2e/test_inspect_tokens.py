"""Inspection of token requests (issue 14, item 3): a registry that wants Bearer
tokens from its own token host; the token request's `scope` is judged like the
repository it names. Also report mode and a reload with an unsafe CA key."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.inspection import InspectionCA, inspect_policy, make_ca
from tests.support.portcullis_proc import run_portcullis
from tests.support.testbed import Testbed, skopeo_pull, verify_pulled
from tests.support.token_registry import AUTH_NAME, TokenRegistry, start_token_registry

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]


@pytest.fixture(scope="module")
def token_registry(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[TokenRegistry]:
    with start_token_registry(testbed, tmp_path_factory.mktemp("tokenreg")) as registry:
        yield registry


@pytest.fixture(scope="module")
def ca(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> InspectionCA:
    return make_ca(tmp_path_factory.mktemp("token-ca"), testbed, ("us.icr.io", AUTH_NAME))


def test_token_scopes_are_judged_like_repositories(
    testbed: Testbed, token_registry: TokenRegistry, ca: InspectionCA, tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    shutil.copytree(ca.trusted_dir, certs)
    shutil.copy(token_registry.ca_bundle, certs / "token-registry.crt")
    policy = inspect_policy(testbed, ca, ["ns/small"],
                            upstream_ca=[str(token_registry.ca_bundle)])
    policy["resolver"]["hosts"] = token_registry.hosts
    policy["resolver"]["allow_ranges"] = sorted(
        {f"{a}/32" for addrs in token_registry.hosts.values() for a in addrs})
    policy["rules"][0]["to"] = ["us.icr.io", AUTH_NAME]
    with run_portcullis(tmp_path / "p", policy) as proxy:
        ok = skopeo_pull(testbed.small_image_ref, tmp_path / "small", ca_dir=certs,
                         proxy=proxy.url, timeout=60)
        assert ok.returncode == 0, ok.stderr
        verify_pulled(tmp_path / "small", testbed.small_image)
        allowed = [a for a in proxy.records("audit") if a.get("registry") == AUTH_NAME]
        assert allowed == []  # token requests are not manifests: counted, not audited
        denied = skopeo_pull(testbed.image_ref, tmp_path / "app", ca_dir=certs,
                             proxy=proxy.url, timeout=60)
        assert denied.returncode != 0
        record = proxy.wait_for_log(lambda r: r.get("event") == "audit"
                                    and r.get("reason") == "scope_denied")
        assert record["registry"] == AUTH_NAME and record["method"] == "GET"
        assert "repository ns/app is not allowed" in record["message"]
        # skopeo prints only the status of a refused token request: the reason is in the log.
        assert "bearer token" in denied.stderr and "403" in denied.stderr, denied.stderr
        assert token_registry.policy.issued.count("anonymous") >= 1


def test_report_mode_lets_a_refused_repository_through_and_says_so(
    testbed: Testbed, ca: InspectionCA, tmp_path: Path
) -> None:
    policy = inspect_policy(testbed, ca, ["ns/small"], mode="report")
    with run_portcullis(tmp_path / "p", policy) as proxy:
        result = skopeo_pull(testbed.small_image_ref.replace("small", "app"), tmp_path / "app",
                             ca_dir=ca.trusted_dir, proxy=proxy.url, timeout=60)
        assert result.returncode == 0, result.stderr
        verify_pulled(tmp_path / "app", testbed.image)
        reported = [a for a in proxy.records("audit") if a.get("repository") == "ns/app"]
        assert reported and {a["decision"] for a in reported} == {"report"}
        assert {a["reason"] for a in reported} == {"repository_denied"}
        assert any(a.get("digest") == testbed.image.manifest_digest for a in reported)


def test_a_reload_with_an_unsafe_key_keeps_the_old_policy(
    testbed: Testbed, ca: InspectionCA, tmp_path: Path
) -> None:
    policy = inspect_policy(testbed, ca, ["ns/small"])
    with run_portcullis(tmp_path / "p", policy) as proxy:
        key = tmp_path / "loose-key.pem"
        shutil.copy(ca.key, key)
        os.chmod(key, 0o644)
        loose = inspect_policy(testbed, ca, ["ns/**"])
        loose["tls_inspection"]["ca_key"] = str(key)
        proxy.write_policy(loose)
        proxy.reload()
        record = proxy.wait_for_log(lambda r: str(r.get("msg", "")).startswith("reload failed"))
        assert "readable by group or others" in record["error"]
        result = skopeo_pull(testbed.image_ref, tmp_path / "app", ca_dir=ca.trusted_dir,
                             proxy=proxy.url, timeout=60)
        assert result.returncode != 0 and "repository ns/app is not allowed" in result.stderr
