"""Registry-aware inspection in explicit mode, end to end (issue 14, items 3-6):
skopeo through Portcullis to the real docker-registry, which redirects blobs
to dd0.icr.io (decided by name, never decrypted)."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from tests.support.containerd import hosts_dir, private_containerd
from tests.support.http import read_to_close
from tests.support.inspection import (
    InspectionCA,
    client_context,
    inspect_policy,
    inspected_tls,
    make_ca,
    request,
)
from tests.support.portcullis_proc import PORTCULLIS, RunningPortcullis, run_portcullis
from tests.support.servers import ScriptedOrigin
from tests.support.testbed import Testbed, skopeo_pull, start_testbed, verify_pulled
from tests.support.testbed.procs import clean_env

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]


@pytest.fixture(scope="module")
def ca(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> InspectionCA:
    return make_ca(tmp_path_factory.mktemp("inspect-ca"), testbed)


@pytest.fixture(scope="module")
def proxy(testbed: Testbed, ca: InspectionCA, tmp_path_factory: pytest.TempPathFactory
          ) -> Any:
    policy = inspect_policy(testbed, ca, ["ns/small"])
    with run_portcullis(tmp_path_factory.mktemp("inspect-proxy"), policy) as running:
        yield running


def skopeo(args: list[str], proxy: RunningPortcullis, timeout: float = 60
           ) -> subprocess.CompletedProcess[str]:
    env = clean_env({k: proxy.url for k in ("HTTPS_PROXY", "https_proxy")})
    return subprocess.run(["skopeo", "--insecure-policy", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def audits(proxy: RunningPortcullis) -> list[dict[str, Any]]:
    return proxy.records("audit")


def storage_files(testbed: Testbed) -> set[str]:
    root = testbed.storage_root
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_allowed_pull_through_inspection_and_the_audit_digest_is_skopeos(
    proxy: RunningPortcullis, testbed: Testbed, ca: InspectionCA, tmp_path: Path
) -> None:
    out = tmp_path / "small"
    result = skopeo_pull(testbed.small_image_ref, out, ca_dir=ca.trusted_dir, proxy=proxy.url,
                         timeout=60)
    assert result.returncode == 0, result.stderr
    verify_pulled(out, testbed.small_image)
    inspected = skopeo(["inspect", "--cert-dir", str(ca.trusted_dir), "--no-creds",
                        f"docker://{testbed.small_image_ref}"], proxy)
    assert inspected.returncode == 0, inspected.stderr
    digest = json.loads(inspected.stdout)["Digest"]
    served = [a for a in audits(proxy) if a.get("digest") and a["repository"] == "ns/small"]
    assert served, audits(proxy)
    assert {a["digest"] for a in served} == {digest, testbed.small_image.manifest_digest}
    record = served[0]
    assert (record["registry"], record["decision"], record["reference"]) == (
        "us.icr.io", "allow", testbed.small_image.tag)
    assert record["registry_digest"] == digest
    assert record["media_type"].startswith("application/vnd.oci.image.manifest.v1+json")
    assert record["size"] == testbed.small_image.manifest_size
    summary = subprocess.run([*PORTCULLIS, "audit", str(proxy.log_path)], capture_output=True,
                             text=True, timeout=30)
    assert summary.returncode == 0, summary.stderr
    assert f"us.icr.io/ns/small@{digest}" in summary.stdout
    # The registry host was inspected; the delivery host was decided by name only.
    decisions = {(r["host"], r["rule"], r["decision"]) for r in proxy.decisions()}
    assert ("us.icr.io", "registry-images", "allow") in decisions
    assert ("dd0.icr.io", "delivery", "allow") in decisions


def test_another_repository_is_denied_and_skopeo_prints_why(
    proxy: RunningPortcullis, testbed: Testbed, ca: InspectionCA, tmp_path: Path
) -> None:
    result = skopeo_pull(testbed.image_ref, tmp_path / "app", ca_dir=ca.trusted_dir,
                         proxy=proxy.url, timeout=60)
    assert result.returncode != 0
    assert "portcullis: repository ns/app is not allowed" in result.stderr, result.stderr
    assert "repository_denied" in result.stderr
    refused = proxy.wait_for_log(lambda r: r.get("event") == "audit"
                                 and r.get("repository") == "ns/app")
    assert (refused["decision"], refused["reason"], refused["status"]) == (
        "deny", "repository_denied", 403)


def test_a_push_is_refused_and_the_registry_stores_nothing_new(
    proxy: RunningPortcullis, testbed: Testbed, ca: InspectionCA
) -> None:
    before = storage_files(testbed)
    layout = testbed.workdir / "layouts" / "small"
    result = skopeo(["copy", "--retry-times", "0", "--dest-no-creds", "--dest-cert-dir",
                     str(ca.trusted_dir), f"oci:{layout}:{testbed.small_image.tag}",
                     "docker://us.icr.io/ns/small:pushed"], proxy)
    assert result.returncode != 0
    assert "DENIED" in result.stderr or "denied" in result.stderr, result.stderr
    assert "access: pull" in result.stderr, result.stderr
    assert storage_files(testbed) == before
    refused = [a for a in audits(proxy) if a["decision"] == "deny" and a["method"] != "GET"]
    assert refused and all(a["reason"] == "method_denied" for a in refused), refused


def test_a_client_without_the_ca_fails_with_client_untrusted_ca(
    proxy: RunningPortcullis, testbed: Testbed, ca: InspectionCA, tmp_path: Path
) -> None:
    result = skopeo_pull(testbed.small_image_ref, tmp_path / "x", ca_dir=ca.testbed_only_dir,
                         proxy=proxy.url, timeout=60)
    assert result.returncode != 0
    assert "certificate" in result.stderr, result.stderr
    record = proxy.wait_for_log(lambda r: r.get("event") == "decision"
                                and r.get("reason") == "client_untrusted_ca")
    assert (record["host"], record["decision"]) == ("us.icr.io", "deny")


def test_refusal_keeps_the_connection_and_pipelined_bytes_wait_their_turn(
    proxy: RunningPortcullis, testbed: Testbed, ca: InspectionCA
) -> None:
    context = client_context(ca.cert)
    with inspected_tls(proxy.explicit, context) as tls:
        status, head, body = request(tls, "GET", "/v2/_catalog")
        assert status == 403 and b"x-portcullis-reason: path_denied" in head.lower()
        error = json.loads(body)["errors"][0]
        assert error["code"] == "DENIED" and error["message"].startswith("portcullis: ")
        status, _, body = request(tls, "GET", "/v2/ns/small/tags/list")
        assert status == 200 and json.loads(body)["tags"] == [testbed.small_image.tag]
        # A refused request with a body ends the connection: its body is never
        # read as the next request.
        smuggled = "GET /v2/ns/app/tags/list HTTP/1.1\r\nHost: us.icr.io\r\n\r\n"
        status, head, _ = request(
            tls, "POST", "/v2/ns/small/blobs/uploads/",
            extra=f"Content-Length: {len(smuggled)}\r\n\r\n{smuggled}")
        assert status == 403 and b"connection: close" in head.lower()
        assert tls.recv(65536) == b""
    refusals = [a for a in audits(proxy) if a.get("repository") == "ns/app"
                and a["path"].endswith("tags/list")]
    assert refusals == []


def test_request_smuggling_is_a_400_and_a_close(
    proxy: RunningPortcullis, ca: InspectionCA
) -> None:
    with inspected_tls(proxy.explicit, client_context(ca.cert)) as tls:
        status, head, body = request(
            tls, "POST", "/v2/ns/small/blobs/uploads/",
            extra="Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        assert status == 400, head
        assert b"both Transfer-Encoding and Content-Length" in body
        assert tls.recv(65536) == b""


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (b"Transfer-Encoding: chunked\r\n\r\n-5\r\nscope\r\n0\r\n\r\n", 400,
         "request body: "),
        (b"Content-Length: 70000\r\n\r\n" + b"s" * 70000, 413,
         "a token request's form is over 65536 bytes"),
    ],
    ids=["bad-chunk-size", "too-large"],
)
def test_a_token_form_the_proxy_cannot_read_is_answered_and_audited(
    proxy: RunningPortcullis, ca: InspectionCA, body: bytes, status: int, detail: str
) -> None:
    # Before, the connection ended without a word and without an audit line.
    with inspected_tls(proxy.explicit, client_context(ca.cert)) as tls:
        tls.sendall(b"POST /token HTTP/1.1\r\nHost: us.icr.io\r\n" + body)
        answer = read_to_close(tls)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:300]
    assert detail.encode() in answer, answer
    record = proxy.wait_for_log(lambda r: r.get("event") == "audit" and r.get("path") == "/token"
                                and r.get("status") == status)
    assert (record["decision"], record["reason"]) == ("deny", "bad_request")
    assert detail in record["message"]


SCRIPTED_IP = "127.0.0.47"


@pytest.fixture(scope="module")
def scripted_registry(tmp_path_factory: pytest.TempPathFactory
                      ) -> Iterator[tuple[ScriptedOrigin, Path]]:
    """An HTTPS origin for us.icr.io that answers as a test tells it to; its CA's PEM."""
    authority = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("us.icr.io").configure_cert(context)
    ca_pem = tmp_path_factory.mktemp("scripted-ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_pem))
    with ScriptedOrigin(SCRIPTED_IP, 443, tls=context) as origin:
        yield origin, ca_pem


@pytest.mark.parametrize(
    ("replies", "detail"),
    [
        # Closed without close_notify: the TLS stream was cut.
        ([b""], "the upstream failed before answering: "),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"],
         "the upstream's answer is not HTTP/1.1"),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"], None),
    ],
    ids=["closed", "bad-length", "kept-alive-then-closed"],
)
def test_an_inspected_upstream_that_fails_before_answering(
    testbed: Testbed, ca: InspectionCA, scripted_registry: tuple[ScriptedOrigin, Path],
    tmp_path: Path, replies: list[bytes], detail: str | None
) -> None:
    origin, origin_ca = scripted_registry
    origin.replies = replies
    policy = inspect_policy(testbed, ca, ["ns/small"], upstream_ca=[str(origin_ca)])
    policy["resolver"]["hosts"]["us.icr.io"] = [SCRIPTED_IP]
    policy["resolver"]["allow_ranges"].append(f"{SCRIPTED_IP}/32")
    with run_portcullis(tmp_path / "p", policy) as running, \
            inspected_tls(running.explicit, client_context(ca.cert)) as tls:
        if detail is None:
            # The first request is answered; the upstream then closes, as a
            # kept-alive connection may: the client's closes as quietly (the race
            # every HTTP client retries on), not with a 502.
            assert request(tls, "GET", "/v2/")[0] == 200
            time.sleep(0.3)
            tls.sendall(b"GET /v2/ HTTP/1.1\r\nHost: us.icr.io\r\n\r\n")
            assert read_to_close(tls) == b""
            return
        status, _, body = request(tls, "GET", "/v2/")
        assert status == 502 and detail in json.loads(body)["errors"][0]["message"], body
        record = running.wait_for_log(lambda r: r.get("event") == "audit")
        assert (record["decision"], record["status"], record["path"]) == ("allow", 502, "/v2/")
        assert detail in record["message"]


def test_an_http2_only_client_is_refused_not_http1(
    proxy: RunningPortcullis, ca: InspectionCA
) -> None:
    with pytest.raises(ssl.SSLError, match=r"NO_APPLICATION_PROTOCOL|no application protocol"):
        inspected_tls(proxy.explicit, client_context(ca.cert, alpn=["h2"]))
    record = proxy.wait_for_log(lambda r: r.get("event") == "decision"
                                and r.get("reason") == "not_http1")
    assert record["decision"] == "deny"


def test_an_upstream_that_fails_verification_is_a_502_upstream_tls(
    testbed: Testbed, ca: InspectionCA, tmp_path: Path
) -> None:
    policy = inspect_policy(testbed, ca, ["ns/small"], upstream_ca=[str(ca.cert)])
    with run_portcullis(tmp_path / "p", policy) as running, \
            inspected_tls(running.explicit, client_context(ca.cert)) as tls:
        status, head, body = request(tls, "GET", "/v2/")
        assert status == 502
        assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
        assert b"upstream_tls" in head
        record = running.wait_for_log(lambda r: r.get("event") == "decision")
        assert (record["decision"], record["reason"]) == ("deny", "upstream_tls")


def test_serve_refuses_a_ca_key_others_can_read(
    testbed: Testbed, ca: InspectionCA, tmp_path: Path
) -> None:
    key = tmp_path / "ca-key.pem"
    shutil.copy(ca.key, key)
    os.chmod(key, 0o640)
    policy = inspect_policy(testbed, ca, ["ns/small"])
    policy["tls_inspection"]["ca_key"] = str(key)
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    done = subprocess.run([*PORTCULLIS, "serve", "-c", str(tmp_path / "policy.yaml")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "readable by group or others (mode 0640)" in done.stderr
    assert f"chmod 600 {key}" in done.stderr


def test_containerd_pulls_the_allowed_repository_and_is_denied_another(
    proxy: RunningPortcullis, testbed: Testbed, ca: InspectionCA, tmp_path: Path
) -> None:
    hosts = hosts_dir(tmp_path / "hosts", "us.icr.io", [testbed.ca_pem, ca.cert])
    started = time.time()
    with private_containerd(tmp_path / "containerd") as containerd:
        pulled = containerd.pull(testbed.small_image_ref, hosts, proxy=proxy.url)
        assert pulled.returncode == 0, pulled.stderr + pulled.stdout
        assert testbed.small_image.manifest_digest in pulled.stdout + pulled.stderr
        # Every connection of the pull trusted the CA its hosts.toml names.
        assert not [r for r in proxy.decisions() if r["reason"] == "client_untrusted_ca"
                    and r["ts"] >= started]
        denied = containerd.pull(testbed.image_ref, hosts, proxy=proxy.url)
        assert denied.returncode != 0
        output = denied.stderr + denied.stdout
        assert "portcullis: repository ns/app is not allowed" in output, output
    clients = {a["digest"] for a in audits(proxy) if a.get("digest")}
    assert testbed.small_image.manifest_digest in clients


def test_check_tells_a_worker_without_the_ca_to_install_it(
    proxy: RunningPortcullis, testbed: Testbed, ca: InspectionCA
) -> None:
    without = subprocess.run([*PORTCULLIS, "check", "--proxy", proxy.url, "--ca",
                              str(testbed.ca_pem), "--image", testbed.small_image_ref],
                             capture_output=True, text=True,
                             timeout=60, env=clean_env())
    assert without.returncode == 1
    assert "install the Portcullis CA" in without.stdout + without.stderr, without.stdout
    bundle = ca.trusted_dir.parent / "bundle.pem"
    bundle.write_bytes(testbed.ca_pem.read_bytes() + ca.cert.read_bytes())
    with_ca = subprocess.run([*PORTCULLIS, "check", "--proxy", proxy.url, "--ca", str(bundle),
                              "--image", testbed.small_image_ref],
                             capture_output=True, text=True, timeout=60, env=clean_env())
    assert with_ca.returncode == 0, with_ca.stdout + with_ca.stderr


def test_blobs_served_by_the_registry_itself_cross_the_inspected_connection(
    ca: InspectionCA, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """No delivery host: the ~21 MiB of blobs come through the decrypted stream."""
    with start_testbed(tmp_path_factory.mktemp("direct-bed"), registry_ip="127.0.0.31",
                       cdn_ip="127.0.0.32", redirect=False) as bed:
        trusted = tmp_path / "certs"
        shutil.copytree(ca.trusted_dir, trusted)
        shutil.copy(bed.ca_pem, trusted / "testbed-ca.crt")
        policy = inspect_policy(bed, ca, ["ns/**"])
        with run_portcullis(tmp_path / "p", policy) as running:
            result = skopeo_pull(bed.image_ref, tmp_path / "app", ca_dir=trusted,
                                 proxy=running.url, timeout=120)
            assert result.returncode == 0, result.stderr
            verify_pulled(tmp_path / "app", bed.image)
            hosts = {r["host"] for r in running.decisions()}
            assert hosts == {"us.icr.io"}
            closes = running.records("close")
            assert sum(c["bytes_down"] for c in closes) >= bed.image.total_size
            hosts_toml = hosts_dir(tmp_path / "hosts", "us.icr.io", [bed.ca_pem, ca.cert])
            with private_containerd(tmp_path / "containerd") as containerd:
                pulled = containerd.pull(bed.image_ref, hosts_toml, proxy=running.url)
                assert pulled.returncode == 0, pulled.stderr + pulled.stdout
            served = [a for a in running.records("audit") if a.get("digest")]
            assert {a["digest"] for a in served} == {bed.image.manifest_digest}


def test_a_client_that_speaks_no_http_is_refused_not_http1(
    proxy: RunningPortcullis, ca: InspectionCA
) -> None:
    with inspected_tls(proxy.explicit, client_context(ca.cert)) as tls:
        tls.sendall(b"\x16\x00SSH-2.0-OpenSSH_9.2\r\n\r\n")
        answer = read_to_close(tls)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"not_http1" in answer
    with inspected_tls(proxy.explicit, client_context(ca.cert)) as tls:
        tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        answer = read_to_close(tls)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"not_http1" in answer
    refusals = [a for a in audits(proxy) if a["reason"] == "not_http1"]
    assert len(refusals) >= 2


def test_admin_explain_and_the_cli_judge_a_request_as_the_proxy_does(
    proxy: RunningPortcullis, ca: InspectionCA
) -> None:
    """`/explain?...&path=&method=` on the running proxy, `portcullis explain
    --path --method` on its policy file and the inspected connection itself give
    the same verdict for each request; a bad value is a 400 naming it."""
    admin = f"http://{proxy.admin[0]}:{proxy.admin[1]}/explain?"
    cases = [("GET", "/v2/ns/small/tags/list", 200, "rule_allow"),
             ("GET", "/v2/ns/app/tags/list", 403, "repository_denied"),
             ("POST", "/v2/ns/small/blobs/uploads/", 403, "method_denied")]
    context = client_context(ca.cert)
    with inspected_tls(proxy.explicit, context) as tls:
        for method, path, status, reason in cases:
            query = {"from": "127.0.0.1", "to": "us.icr.io", "path": path, "method": method}
            with urllib.request.urlopen(admin + urllib.parse.urlencode(query),
                                        timeout=10) as answer:
                served = json.loads(answer.read())
            explained = subprocess.run(
                [*PORTCULLIS, "explain", "-c", str(proxy.policy_path), "--json", "--from",
                 "127.0.0.1", "--to", "us.icr.io", "--path", path, "--method", method],
                capture_output=True, text=True, timeout=30, check=False)
            assert explained.returncode == (0 if status == 200 else 1), explained.stderr
            assert json.loads(explained.stdout) == served
            assert (served["request"]["reason"], served["request"]["allowed"]) == (
                reason, status == 200)
            got, head, _ = request(tls, method, path, extra="Content-Length: 0\r\n"
                                   if method == "POST" else "")
            assert got == status, head
            if status != 200:
                assert f"x-portcullis-reason: {reason}".encode() in head.lower()
    bad = {"from": "127.0.0.1", "to": "us.icr.io", "path": "/v2/ns/../app/tags/list"}
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(admin + urllib.parse.urlencode(bad), timeout=10)
    assert caught.value.code == 400
    assert json.loads(caught.value.read())["error"].startswith("query parameter 'path' ")
