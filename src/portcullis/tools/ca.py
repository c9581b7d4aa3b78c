"""`portcullis ca init` and `ca show`: the inspection CA, and how to trust it.

The CA is ECDSA P-256, valid for at most a year, and carries critical X.509
name constraints: it may vouch only for the names the policy inspects (a name
permits itself and every name below it) and for no IP address, so a stolen
key cannot impersonate any other site to a client that checks constraints.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from portcullis.basics.errors import ConfigError
from portcullis.basics.names import parse_pattern
from portcullis.config import Policy
from portcullis.net.minting import load_pem_certificate
from portcullis.policy.engine import Engine

CERT_FILE = "ca.pem"
KEY_FILE = "ca-key.pem"
MAX_DAYS = 365


def inspected_names(policy: Policy) -> list[str]:
    """The DNS subtrees the policy inspects: each name, and each `*.suffix`'s suffix."""
    names: list[str] = []
    for rule in Engine(policy).rules:
        if rule.inspect is None:
            continue
        for dest in rule.destinations:
            suffix = parse_pattern(dest).suffix
            if suffix not in names:
                names.append(suffix)
    return names


def build_ca(names: list[str], days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if not names:
        raise ConfigError("no names to constrain the CA to: the policy has no rule with"
                          " `inspect:`; add one, or give --name")
    if not 1 <= days <= MAX_DAYS:
        raise ConfigError(f"--days {days}: a CA lives 1 to {MAX_DAYS} days")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Portcullis"),
        x509.NameAttribute(NameOID.COMMON_NAME, "Portcullis inspection CA"),
    ])
    constraints = x509.NameConstraints(
        permitted_subtrees=[x509.DNSName(n) for n in names],
        excluded_subtrees=[x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
                           x509.IPAddress(ipaddress.ip_network("::/0"))],
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(constraints, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def write_ca(out: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
             ) -> tuple[Path, Path]:
    """Write the pair; the key is created 0600 and never replaced silently."""
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / CERT_FILE, out / KEY_FILE
    for path in (cert_path, key_path):
        if path.exists():
            raise ConfigError(f"{path} exists; remove it first or choose another --out")
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


@dataclass(frozen=True, slots=True)
class CAFacts:
    path: Path
    subject: str
    fingerprint: str
    not_after: datetime.datetime
    permitted: tuple[str, ...]


def ca_facts(path: Path) -> CAFacts:
    cert = load_pem_certificate(path)
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    try:
        constraints = cert.extensions.get_extension_for_class(x509.NameConstraints).value
        permitted = tuple(str(n.value) for n in constraints.permitted_subtrees or ())
    except x509.ExtensionNotFound:
        permitted = ()
    return CAFacts(path, cert.subject.rfc4514_string(),
                   ":".join(digest[i:i + 2] for i in range(0, len(digest), 2)),
                   cert.not_valid_after_utc, permitted)


def trust_instructions(facts: CAFacts) -> list[str]:
    """How each client learns to trust the CA (one name as the example)."""
    host = next((n for n in facts.permitted), "us.icr.io")
    p = facts.path
    return [
        f"containerd: /etc/containerd/certs.d/{host}/hosts.toml:",
        f'    server = "https://{host}"',
        f'    [host."https://{host}"]',
        '      capabilities = ["pull", "resolve"]',
        f'      ca = "{p}"   # a bundle with the registry\'s own CA too, if it is private',
        '  (and config_path = "/etc/containerd/certs.d" in the CRI registry section)',
        f"CRI-O, podman, skopeo, buildah: cp {p} /etc/containers/certs.d/{host}/portcullis-ca.crt",
        f"docker: cp {p} /etc/docker/certs.d/{host}/ca.crt",
        f"system store (Debian): cp {p} /usr/local/share/ca-certificates/portcullis-ca.crt"
        " && update-ca-certificates",
    ]
