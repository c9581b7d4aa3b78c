"""The inspection CA at run time: load it, refuse a key others can read, mint leaves.

A leaf is minted per name the first time a client asks for it (ECDSA P-256,
the name as its only SAN, a life of `leaf_days`), kept in memory with its
`ssl.SSLContext`, and never written to disk: OpenSSL reads the PEM from an
anonymous in-memory file (memfd), the way `load_cert_chain` needs a path.
All leaves share one key made at start-up, as mitmproxy's do: minting is then
one signature, not a key generation per name.
"""

from __future__ import annotations

import datetime
import os
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from portcullis.basics.errors import ConfigError
from portcullis.basics.memo import remember

_CACHE_MAX = 1024
# Re-mint a cached leaf this long before it expires, so no client sees one expire mid-use.
_RENEW_BEFORE = datetime.timedelta(hours=12)
# Back-date leaves: a client whose clock is a little behind would refuse a brand-new one.
_BACKDATE = datetime.timedelta(hours=1)


class CAError(ConfigError):
    """The inspection CA cannot be used; the message says which file and why."""


def check_key_mode(path: Path) -> None:
    """Refuse a CA key that anyone but its owner can read: whoever reads it can
    mint certificates the workers trust."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise CAError(f"cannot read the CA key {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CAError(
            f"the CA key {path} is readable by group or others (mode {stat.S_IMODE(mode):04o});"
            f" run `chmod 600 {path}`: anyone who reads it can mint certificates the workers trust"
        )


def load_pem_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise CAError(f"cannot read the CA certificate {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise CAError(f"{path} is not a PEM certificate: {exc}") from None


@dataclass(slots=True)
class _Leaf:
    context: ssl.SSLContext
    not_after: datetime.datetime


class CertificateAuthority:
    """The CA that vouches for the inspected names, and the leaves it minted."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey,
                 leaf_days: int = 7) -> None:
        self.cert = cert
        self._key = key
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key_pem = self._leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        self._ca_pem = cert.public_bytes(serialization.Encoding.PEM)
        self._leaf_life = datetime.timedelta(days=leaf_days)
        self._leaves: dict[str, _Leaf] = {}
        self.minted = 0

    @classmethod
    def load(cls, cert_path: str | Path, key_path: str | Path, leaf_days: int = 7
             ) -> CertificateAuthority:
        cert_file, key_file = Path(cert_path), Path(key_path)
        check_key_mode(key_file)
        cert = load_pem_certificate(cert_file)
        try:
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise CAError(f"cannot load the CA key {key_file}: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CAError(f"the CA key {key_file} is not an ECDSA key; use `portcullis ca init`")
        if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
            raise CAError(f"the CA key {key_file} does not belong to {cert_file}")
        return cls(cert, key, leaf_days)

    def context_for(self, name: str) -> ssl.SSLContext:
        """A server context presenting a leaf for `name` (minted on first use)."""
        now = datetime.datetime.now(datetime.UTC)
        leaf = self._leaves.get(name)
        if leaf is None or leaf.not_after - now < _RENEW_BEFORE:
            leaf = remember(self._leaves, name, self._mint(name, now), _CACHE_MAX)
        return leaf.context

    def _mint(self, name: str, now: datetime.datetime) -> _Leaf:
        not_after = min(now + self._leaf_life, self.cert.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        pem = cert.public_bytes(serialization.Encoding.PEM) + self._ca_pem + self._leaf_key_pem
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        fd = os.memfd_create("portcullis-leaf", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        self.minted += 1
        return _Leaf(context, not_after)


def upstream_context(extra_cas: list[str]) -> ssl.SSLContext:
    """Full verification upstream: the system store plus the policy's `upstream_ca`."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.set_alpn_protocols(["http/1.1"])
    for path in extra_cas:
        try:
            context.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            raise CAError(f"tls_inspection.upstream_ca: cannot load {path}: {exc}") from None
    return context
