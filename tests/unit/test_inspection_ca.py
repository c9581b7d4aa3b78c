"""`ca init` / `ca show`, the CA's name constraints, leaf minting and the key-mode
refusal; `explain --path` (issue 14, items 1 and 2)."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import textwrap
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from portcullis.cli import main
from portcullis.net.minting import CAError, CertificateAuthority, check_key_mode


def _init(tmp_path: Path, *args: str) -> Path:
    out = tmp_path / "ca"
    result = CliRunner().invoke(main, ["ca", "init", "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return out


def test_ca_init_writes_a_constrained_p256_ca_and_a_private_key(tmp_path: Path) -> None:
    out = _init(tmp_path, "--name", "us.icr.io", "--name", "*.icr.io", "--days", "30")
    assert (out / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    constraints = cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    permitted = [n.value for n in constraints.value.permitted_subtrees or ()]
    assert permitted == ["us.icr.io", "icr.io"]
    assert len(constraints.value.excluded_subtrees or ()) == 2  # every IPv4 and IPv6 address
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life <= datetime.timedelta(days=30, hours=1)
    again = CliRunner().invoke(main, ["ca", "init", "--out", str(out), "--name", "x.icr.io"])
    assert again.exit_code == 2 and "exists" in again.output


def test_ca_init_takes_the_names_from_the_policy_and_refuses_too_long(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(textwrap.dedent("""\
        version: 1
        sources: {workers: [10.0.0.0/8]}
        rules:
          - {name: a, from: [workers], to: [us.icr.io, "*.quay.io"],
             inspect: {repositories: ["ns/**"]}}
          - {name: b, from: [workers], to: [de.icr.io]}
        tls_inspection: {ca_cert: /x/ca.pem, ca_key: /x/ca-key.pem}
        """))
    out = _init(tmp_path, "-c", str(policy))
    shown = CliRunner().invoke(main, ["ca", "show", "--cert", str(out / "ca.pem")])
    assert shown.exit_code == 0, shown.output
    assert "permits      us.icr.io, quay.io" in shown.output
    assert "sha256       " in shown.output and "hosts.toml" in shown.output
    assert "/etc/containers/certs.d/us.icr.io/" in shown.output
    long = CliRunner().invoke(main, ["ca", "init", "--out", str(tmp_path / "l"),
                                     "--name", "us.icr.io", "--days", "400"])
    assert long.exit_code == 2 and "1 to 365 days" in long.output


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    out = _init(tmp_path, "--name", "us.icr.io")
    os.chmod(out / "ca-key.pem", 0o644)
    with pytest.raises(CAError, match=r"readable by group or others.*chmod 600"):
        check_key_mode(out / "ca-key.pem")
    with pytest.raises(CAError):
        CertificateAuthority.load(out / "ca.pem", out / "ca-key.pem")


def _handshake(ca: CertificateAuthority, name: str, trust: Path) -> str:
    """A real TLS handshake on a socket pair: OpenSSL verifies the minted leaf."""
    server_sock, client_sock = socket.socketpair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with ca.context_for(name).wrap_socket(server_sock, server_side=True) as tls:
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    context = ssl.create_default_context(cafile=str(trust))
    context.set_alpn_protocols(["http/1.1"])
    try:
        with context.wrap_socket(client_sock, server_hostname=name) as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"
            return tls.recv(2).decode()
    finally:
        thread.join()


def test_minted_leaves_verify_are_cached_and_the_constraints_hold(tmp_path: Path) -> None:
    out = _init(tmp_path, "--name", "us.icr.io")
    ca = CertificateAuthority.load(out / "ca.pem", out / "ca-key.pem")
    assert _handshake(ca, "us.icr.io", out / "ca.pem") == "ok"
    assert ca.context_for("us.icr.io") is ca.context_for("us.icr.io")
    assert ca.minted == 1
    # A name outside the constraints: the CA signs, but no verifying client accepts it.
    with pytest.raises(ssl.SSLCertVerificationError, match=r"(?i)name constraint|permitted"):
        _handshake(ca, "evil.example", out / "ca.pem")
    assert not list(tmp_path.rglob("*leaf*"))  # nothing minted reaches the disk


def test_explain_path_judges_a_request(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(textwrap.dedent("""\
        version: 1
        sources: {workers: [10.0.0.0/8]}
        rules:
          - {name: platform, from: [workers], to: [us.icr.io],
             inspect: {repositories: ["platform/**"]}}
          - {name: plain, from: [workers], to: [de.icr.io]}
        tls_inspection: {ca_cert: /x/ca.pem, ca_key: /x/ca-key.pem}
        """))
    base = ["explain", "-c", str(policy), "--from", "10.1.2.3", "--no-resolve"]
    ok = CliRunner().invoke(main, [*base, "--to", "us.icr.io", "--path",
                                   "/v2/platform/app/manifests/1"])
    assert ok.exit_code == 0 and "request  ALLOW (reason: rule_allow)" in ok.output
    denied = CliRunner().invoke(main, [*base, "--to", "us.icr.io", "--path",
                                       "/v2/other/app/manifests/1"])
    assert denied.exit_code == 1
    assert "DENY (reason: repository_denied): repository other/app is not allowed" in (
        denied.output)
    plain = CliRunner().invoke(main, [*base, "--to", "de.icr.io", "--path", "/v2/x/manifests/1"])
    assert plain.exit_code == 0 and "not inspected" in plain.output
    bad = CliRunner().invoke(main, [*base, "--to", "us.icr.io", "--path", "/v2/a/../b"])
    assert bad.exit_code == 2


def test_a_leaf_lives_leaf_days_and_names_only_its_host(tmp_path: Path) -> None:
    out = _init(tmp_path, "--name", "us.icr.io")
    ca = CertificateAuthority.load(out / "ca.pem", out / "ca-key.pem", leaf_days=1)
    server_sock, client_sock = socket.socketpair()
    thread = threading.Thread(
        target=lambda: ca.context_for("us.icr.io").wrap_socket(server_sock, server_side=True))
    thread.start()
    context = ssl.create_default_context(cafile=str(out / "ca.pem"))
    with context.wrap_socket(client_sock, server_hostname="us.icr.io") as tls:
        der = tls.getpeercert(binary_form=True)
    thread.join()
    assert der is not None
    leaf = x509.load_der_x509_certificate(der)
    assert leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC) <= datetime.timedelta(
        days=1)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["us.icr.io"]
