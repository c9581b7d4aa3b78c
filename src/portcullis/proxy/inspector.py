"""Setting up an inspected connection: the CA, the two TLS handshakes, their failures.

The CA and the upstream trust store are loaded once per `tls_inspection:`
section (start-up checks them, so a bad key stops `serve` before it listens).
The client's handshake comes first: a client that does not trust the CA
fails there, and says so with an alert, which is logged as
`client_untrusted_ca`. The upstream handshake verifies the registry's
certificate for the name decided on (system store plus `upstream_ca`).
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass

from portcullis.basics.vocabulary import Reason
from portcullis.config.models import TlsInspection
from portcullis.net.minting import CertificateAuthority, upstream_context

# TLS alert no_application_protocol(120): the client offered ALPN without http/1.1.
NO_APPLICATION_PROTOCOL_ALERT = bytes.fromhex("15030300020278")
# What a client that does not trust the presented chain says (OpenSSL's names
# of the alerts bad_certificate, unknown_ca, certificate_unknown).
_UNTRUSTED_ALERTS = ("ALERT_BAD_CERTIFICATE", "ALERT_UNKNOWN_CA", "ALERT_CERTIFICATE_UNKNOWN")


@dataclass(frozen=True, slots=True)
class Inspector:
    ca: CertificateAuthority
    upstream: ssl.SSLContext


@functools.lru_cache(maxsize=4)
def _load(ca_cert: str, ca_key: str, upstream_ca: tuple[str, ...], leaf_days: int) -> Inspector:
    return Inspector(CertificateAuthority.load(ca_cert, ca_key, leaf_days),
                     upstream_context(list(upstream_ca)))


def inspector_for(tls: TlsInspection) -> Inspector:
    """The CA and upstream context of a `tls_inspection:` section; CAError when unusable."""
    return _load(tls.ca_cert, tls.ca_key, tuple(tls.upstream_ca), tls.leaf_days)


def client_failure(exc: BaseException) -> Reason:
    """What a failed client handshake means."""
    if isinstance(exc, ssl.SSLError) and any(a in (exc.reason or "") for a in _UNTRUSTED_ALERTS):
        return Reason.CLIENT_UNTRUSTED_CA
    if isinstance(exc, ssl.SSLError) and "NO_APPLICATION_PROTOCOL" in (exc.reason or ""):
        return Reason.NOT_HTTP1
    return Reason.CLIENT_TLS


def offers_http1(alpn: tuple[str, ...]) -> bool:
    """No ALPN (HTTP/1.1 assumed) or an offer that includes http/1.1."""
    return not alpn or "http/1.1" in alpn
