"""A throw-away CA and the server certificates of the testbed, made with trustme."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class ServerCert:
    cert: Path  # leaf followed by its chain, as nginx and Go's crypto/tls want it
    key: Path


@dataclass(frozen=True)
class Pki:
    ca_dir: Path  # holds only ca.crt: what `skopeo --src-cert-dir/--dest-cert-dir` expects
    ca_pem: Path  # the same CA for Python clients (ssl.create_default_context(cafile=...))
    registry: ServerCert
    cdn: ServerCert


def _issue(ca: trustme.CA, names: list[str], directory: Path, stem: str) -> ServerCert:
    leaf = ca.issue_cert(*names)
    cert = directory / f"{stem}.crt"
    key = directory / f"{stem}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    for extra in leaf.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    leaf.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    return ServerCert(cert=cert, key=key)


def make_pki(directory: Path, *, registry_names: list[str], cdn_names: list[str]) -> Pki:
    """Write a CA and two server certificates under `directory`.

    `registry_names` and `cdn_names` may mix DNS names and IP literals; trustme puts
    IP literals in iPAddress SANs, which is what lets skopeo seed the registry by
    address while clients behind the proxy verify it by name.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="Portcullis testbed")
    ca_dir = directory / "ca"
    ca_dir.mkdir(exist_ok=True)
    # A *.crt file is read as a CA by containers/image; a *.cert would be taken as a
    # client certificate and require a matching *.key, so the suffix matters.
    ca.cert_pem.write_to_path(str(ca_dir / "ca.crt"))
    ca_pem = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    return Pki(
        ca_dir=ca_dir,
        ca_pem=ca_pem,
        registry=_issue(ca, registry_names, directory, "registry"),
        cdn=_issue(ca, cdn_names, directory, "cdn"),
    )
