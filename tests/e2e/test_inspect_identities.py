"""Inspection with identities and quotas (issue 14 with issue 15, parts 3-4):
a Basic login (skopeo) or a client certificate (curl, on the TLS listener) is
decided by rules with `inspect:` that name identity groups, each group its own
repositories; the audit carries the identity. An inspected connection holds a
quota tunnel until it ends, whichever way it ends. In report mode, the proxy,
`portcullis explain` and admin `/explain` agree on what identities decide."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.support.http import Answer, connect, dial, read_head, read_to_close
from tests.support.inspection import (
    InspectionCA,
    client_context,
    inspect_policy,
    make_ca,
    request,
)
from tests.support.portcullis_proc import PORTCULLIS, RunningPortcullis, run_portcullis
from tests.support.testbed import Testbed, skopeo_pull, verify_pulled

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]

USER, SECRET = "runner-1", "correct-horse-battery"
BUILDER = "build.ci.example"  # a client certificate's identity
LIMITED = "127.0.0.7"  # a source group allowed two tunnels at once
MANIFEST = "Accept: application/vnd.oci.image.manifest.v1+json\r\n"


@pytest.fixture(scope="module")
def ca(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> InspectionCA:
    return make_ca(tmp_path_factory.mktemp("identities-ca"), testbed)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The passwd file, the TLS listener's certificate and a client CA with BUILDER."""
    directory = tmp_path_factory.mktemp("identities-pki")
    out = {name: directory / f"{name}.pem" for name in ("server_ca", "server", "client_ca",
                                                         "client")}
    out["passwd"] = directory / "passwd"
    done = subprocess.run([*PORTCULLIS, "passwd", str(out["passwd"]), USER, "--password-stdin",
                           "--scheme", "bcrypt", "--cost", "6"], input=SECRET + "\n",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server_ca.cert_pem.write_to_path(str(out["server_ca"]))
    server_ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(out["server"]))
    client_ca.cert_pem.write_to_path(str(out["client_ca"]))
    client_ca.issue_cert(BUILDER).private_key_and_cert_chain_pem.write_to_path(
        str(out["client"]))
    return out


def identities_policy(testbed: Testbed, ca: InspectionCA, pki: dict[str, Path],
                      mode: str = "enforce") -> dict[str, Any]:
    """runners (a login) may pull ns/small, builders (a certificate) ns/app, the
    LIMITED address ns/small with two tunnels at once, the builders one;
    127.0.0.1 is in no group."""
    policy = inspect_policy(testbed, ca, ["ns/small"], mode=mode, extra={
        "auth": {"passwords": str(pki["passwd"]),
                 "tls": {"certificate": str(pki["server"]), "key": str(pki["server"]),
                         "client_ca": str(pki["client_ca"])}},
        "identities": {"runners": {"names": [USER]}, "builders": {"names": [BUILDER]}},
        # One tunnel for the builders: each curl through the TLS listener must
        # give it back for the next to get in.
        "quotas": {"limited": {"max_tunnels": 2}, "builders": {"max_tunnels": 1}},
    })
    policy["sources"] = {"workers": ["127.0.0.2/32"], "limited": [f"{LIMITED}/32"]}
    policy["listen"]["explicit_tls"] = "127.0.0.1:0"
    images, delivery = policy["rules"]
    images["from"] = ["runners", "limited"]
    delivery["from"] = ["runners", "builders", "limited"]
    builders = {**images, "name": "builder-images", "from": ["builders"],
                "inspect": {"repositories": ["ns/app"], "access": "pull"}}
    policy["rules"] = [images, builders, delivery]
    return policy


@pytest.fixture(scope="module")
def proxy(testbed: Testbed, ca: InspectionCA, pki: dict[str, Path],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPortcullis]:
    with run_portcullis(tmp_path_factory.mktemp("identities"),
                        identities_policy(testbed, ca, pki)) as running:
        yield running


def tls_listener(proxy: RunningPortcullis) -> str:
    listening = proxy.wait_for_log(lambda r: r.get("msg") == "listening")
    return f"https://{listening['explicit_tls']}"


def audits_of(proxy: RunningPortcullis, identity: str) -> list[dict[str, Any]]:
    return [a for a in proxy.records("audit") if a.get("identity") == identity]


def test_a_login_is_inspected_by_its_groups_rule_and_audited_by_name(
    proxy: RunningPortcullis, testbed: Testbed, ca: InspectionCA, tmp_path: Path
) -> None:
    host, port = proxy.explicit
    login = f"http://{USER}:{SECRET}@{host}:{port}"
    result = skopeo_pull(testbed.small_image_ref, tmp_path / "small", ca_dir=ca.trusted_dir,
                         proxy=login, timeout=60)
    assert result.returncode == 0, result.stderr
    verify_pulled(tmp_path / "small", testbed.small_image)
    result = skopeo_pull(testbed.image_ref, tmp_path / "app", ca_dir=ca.trusted_dir,
                         proxy=login, timeout=60)
    assert "repository ns/app is not allowed (reason: repository_denied, rule: " \
        "registry-images)" in result.stderr, result.stderr
    audits = audits_of(proxy, USER)
    served = [a for a in audits if a.get("digest")]
    assert served and {a["digest"] for a in served} == {testbed.small_image.manifest_digest}
    assert ("ns/app", "deny", "repository_denied") in {
        (a.get("repository"), a["decision"], a["reason"]) for a in audits}
    ids = {a["id"] for a in audits}
    records = [r for r in proxy.decisions() if r["id"] in ids]
    assert records and all((r["identity"], r["rule"]) == (USER, "registry-images")
                           for r in records)
    summary = subprocess.run([*PORTCULLIS, "audit", str(proxy.log_path)], capture_output=True,
                             text=True, timeout=30)
    assert f"client 127.0.0.1 ({USER})" in summary.stdout, summary.stdout


def curl_manifest(proxy: RunningPortcullis, pki: dict[str, Path], ca: InspectionCA,
                  repository: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", "-x", tls_listener(proxy),
         "--proxy-cacert", str(pki["server_ca"]), "--proxy-cert", str(pki["client"]),
         "--cacert", str(ca.cert), "-H", MANIFEST.split("\r")[0], "-w", "\n%{http_code}",
         f"https://us.icr.io/v2/{repository}/manifests/1"],
        capture_output=True, text=True, timeout=30, check=False, env={"PATH": "/usr/bin:/bin"})


def test_a_client_certificate_is_inspected_by_its_groups_rule(
    proxy: RunningPortcullis, pki: dict[str, Path], ca: InspectionCA, testbed: Testbed
) -> None:
    done = curl_manifest(proxy, pki, ca, "ns/app")
    assert done.stdout.endswith("\n200"), (done.stdout, done.stderr)
    # The tunnel is given back as the close is recorded (no await between them):
    # after that, the builders' one tunnel is free for the next curl.
    served = proxy.wait_for_log(lambda r: r.get("identity") == BUILDER
                                and r.get("event") == "audit")
    proxy.wait_for_log(lambda r: r.get("event") == "close" and r["id"] == served["id"])
    done = curl_manifest(proxy, pki, ca, "ns/small")
    assert done.stdout.endswith("\n403"), (done.stdout, done.stderr)
    assert '"code":"DENIED"' in done.stdout and "rule: builder-images" in done.stdout
    audits = audits_of(proxy, BUILDER)
    assert {(a["repository"], a["decision"]) for a in audits} == {
        ("ns/app", "allow"), ("ns/small", "deny")}
    assert [a["digest"] for a in audits if a.get("digest")] == [testbed.image.manifest_digest]
    records = [r for r in proxy.decisions() if r["id"] in {a["id"] for a in audits}]
    assert {(r["mode"], r["identity"], r["rule"]) for r in records} == {
        ("explicit_tls", BUILDER, "builder-images")}


def inspected(proxy: RunningPortcullis, context: ssl.SSLContext) -> ssl.SSLSocket:
    """An inspected connection from LIMITED, one request answered: it is open."""
    sock, answer = connect(proxy.explicit, "us.icr.io:443", source=LIMITED)
    assert answer.status == 200, answer.data
    tls = context.wrap_socket(sock, server_hostname="us.icr.io")
    assert request(tls, "GET", "/v2/")[0] == 200
    return tls


def refused_for_capacity(proxy: RunningPortcullis) -> bool:
    sock, answer = connect(proxy.explicit, "us.icr.io:443", source=LIMITED)
    sock.close()
    if answer.status == 200:
        return False
    assert (answer.status, answer.header("X-Portcullis-Reason")) == (503, "over_capacity")
    return True


def test_an_inspected_connection_gives_its_tunnel_back_when_it_ends(
    proxy: RunningPortcullis, ca: InspectionCA, testbed: Testbed
) -> None:
    context = client_context(ca.cert)
    held = [inspected(proxy, context) for _ in range(2)]
    assert refused_for_capacity(proxy)
    # The client ends one cleanly, the other drops its socket mid-session.
    with contextlib.suppress(OSError):
        held[0].unwrap().close()
    held[1].close()
    # Connections that end at the handshake (the client lacks the CA) hold none.
    untrusted = client_context(testbed.ca_pem)
    for _ in range(3):
        sock, answer = connect(proxy.explicit, "us.icr.io:443", source=LIMITED)
        assert answer.status == 200, answer.data
        with pytest.raises(ssl.SSLError):
            untrusted.wrap_socket(sock, server_hostname="us.icr.io")
        sock.close()
    deadline = time.monotonic() + 5
    while True:
        try:
            again = [inspected(proxy, context) for _ in range(2)]
            break
        except AssertionError:
            assert time.monotonic() < deadline, "the tunnels were not given back"
            time.sleep(0.1)
    assert refused_for_capacity(proxy)
    for tls in again:
        tls.close()
    untrusted_records = [r for r in proxy.decisions() if r["client"] == LIMITED
                         and r["reason"] == "client_untrusted_ca"]
    assert len(untrusted_records) == 3


# --- report mode: the proxy and explain agree ------------------------------------------


@pytest.fixture(scope="module")
def reporting(testbed: Testbed, ca: InspectionCA, pki: dict[str, Path],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPortcullis]:
    with run_portcullis(tmp_path_factory.mktemp("identities-report"),
                        identities_policy(testbed, ca, pki, mode="report")) as running:
        yield running


def login_connect(proxy: RunningPortcullis, source: str, login: str | None
                  ) -> tuple[socket.socket, Answer]:
    sock = dial(proxy.explicit, source=source)
    auth = ""
    if login is not None:
        auth = f"Proxy-Authorization: Basic {base64.b64encode(login.encode()).decode()}\r\n"
    sock.sendall(f"CONNECT us.icr.io:443 HTTP/1.1\r\nHost: us.icr.io:443\r\n{auth}\r\n".encode())
    return sock, Answer(*read_head(sock))


def essence(record: dict[str, Any]) -> tuple[str, str, str | None]:
    return record["decision"], record["reason"], record["rule"]


def by_cli(proxy: RunningPortcullis, source: str, identity: str | None) -> dict[str, Any]:
    argv = [*PORTCULLIS, "explain", "-c", str(proxy.policy_path), "--from", source,
            "--to", "us.icr.io:443", "--json"]
    if identity is not None:
        argv += ["--identity", identity]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    result = dict(json.loads(done.stdout))
    assert done.returncode == (1 if result["decision"] == "deny" else 0), done.stderr
    return result


def by_admin(proxy: RunningPortcullis, source: str) -> dict[str, Any]:
    query = urllib.parse.urlencode({"from": source, "to": "us.icr.io:443"})
    url = f"http://{proxy.admin[0]}:{proxy.admin[1]}/explain?{query}"
    with urllib.request.urlopen(url, timeout=10) as answer:
        return dict(json.loads(answer.read()))


@pytest.mark.parametrize(("source", "login", "identity", "expected"), [
    # No login where one would help: a reported 407, let through.
    ("127.0.0.1", None, None, ("report", "auth_required", None)),
    # A login whose group's rule inspects: allowed by that rule.
    ("127.0.0.1", f"{USER}:{SECRET}", USER, ("allow", "rule_allow", "registry-images")),
    # An address in a limited group, under its quota.
    (LIMITED, None, None, ("allow", "rule_allow", "registry-images")),
], ids=["no-login", "login", "limited"])
def test_report_mode_proxy_and_explain_agree_on_identities(
    reporting: RunningPortcullis, source: str, login: str | None, identity: str | None,
    expected: tuple[str, str, str | None],
) -> None:
    mark = len(reporting.records())
    sock, answer = login_connect(reporting, source, login)
    port = sock.getsockname()[1]
    sock.close()
    assert answer.status == 200, answer.data
    record = reporting.decision_since(mark, port)
    assert essence(record) == expected
    assert record.get("identity") == identity
    assert essence(by_cli(reporting, source, identity)) == expected
    if identity is None:  # admin /explain takes no identity
        assert essence(by_admin(reporting, source)) == expected


def test_report_mode_refuses_what_it_cannot_report(reporting: RunningPortcullis) -> None:
    """A wrong password and a spent quota are denies in report mode too; explain,
    which has neither the password nor the running count, names the same rule."""
    sock, answer = login_connect(reporting, "127.0.0.1", f"{USER}:wrong")
    sock.close()
    assert (answer.status, answer.header("X-Portcullis-Reason")) == (407, "auth_failed")
    held = [login_connect(reporting, LIMITED, None) for _ in range(2)]
    try:
        assert [a.status for _, a in held] == [200, 200]
        mark = len(reporting.records())
        sock, answer = login_connect(reporting, LIMITED, None)
        port = sock.getsockname()[1]
        read_to_close(sock)
        sock.close()
        assert (answer.status, answer.header("X-Portcullis-Reason")) == (503, "over_capacity")
        record = reporting.decision_since(mark, port)
        assert essence(record) == ("deny", "over_capacity", "registry-images")
        assert essence(by_cli(reporting, LIMITED, None))[2] == record["rule"]
    finally:
        for held_sock, _ in held:
            held_sock.close()


def explain_request_json(proxy: RunningPortcullis, path: str, *args: str) -> dict[str, Any]:
    done = subprocess.run([*PORTCULLIS, "explain", "-c", str(proxy.policy_path), "--from",
                           "127.0.0.1", "--to", "us.icr.io:443", "--identity", USER, "--json",
                           "--path", path, *args],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, (done.stdout, done.stderr)  # report mode lets both through
    return dict(json.loads(done.stdout)["request"])


def test_report_mode_proxy_and_explain_agree_on_requests(
    reporting: RunningPortcullis, ca: InspectionCA, testbed: Testbed
) -> None:
    path = "/v2/ns/app/manifests/1"
    # A login's inspected connection: the refused repository is reported, and served.
    sock, answer = login_connect(reporting, "127.0.0.1", f"{USER}:{SECRET}")
    assert answer.status == 200, answer.data
    with client_context(ca.cert).wrap_socket(sock, server_hostname="us.icr.io") as tls:
        assert request(tls, "GET", path, extra=MANIFEST)[0] == 200
    audit = reporting.wait_for_log(lambda r: r.get("event") == "audit" and r.get("path") == path)
    assert (audit["decision"], audit["reason"], audit["identity"]) == (
        "report", "repository_denied", USER)
    explained = explain_request_json(reporting, path)
    assert (explained["decision"], explained["reason"]) == ("report", "repository_denied")

    # A reported SNI mismatch is relayed as the name decides: nothing is judged,
    # and explain says it is not inspected.
    mark = len(reporting.records())
    sock, answer = login_connect(reporting, "127.0.0.1", f"{USER}:{SECRET}")
    port = sock.getsockname()[1]
    blind = ssl.create_default_context(cafile=str(testbed.ca_pem))
    blind.check_hostname = False  # the registry's certificate names us.icr.io
    with blind.wrap_socket(sock, server_hostname="dd0.icr.io") as tls:
        assert request(tls, "GET", path, extra=MANIFEST)[0] == 200
    record = reporting.decision_since(mark, port)
    assert essence(record) == ("report", "sni_mismatch", "registry-images")
    assert not [a for a in reporting.records("audit") if a["id"] == record["id"]]
    assert explain_request_json(reporting, path, "--sni", "dd0.icr.io")["inspected"] is False
