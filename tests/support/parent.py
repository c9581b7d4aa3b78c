"""Squid as a corporate parent proxy: the certificate of its `https_port` (which
Portcullis verifies with `upstream_proxy.ca`) and waiting for its access log."""

from __future__ import annotations

import time
from pathlib import Path

import trustme

from tests.support.testbed.squid import ReferenceProxy


def parent_pki(directory: Path, ip: str) -> None:
    """Write ca.pem, parent.pem and parent.key (readable by Squid's `proxy` user)
    into `directory`, for a parent listening on `ip`."""
    ca = trustme.CA(organization_name="Corporate parent")
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    issued = ca.issue_cert(ip)
    issued.cert_chain_pems[0].write_to_path(str(directory / "parent.pem"))
    issued.private_key_pem.write_to_path(str(directory / "parent.key"))
    for name in ("parent.pem", "parent.key"):
        (directory / name).chmod(0o644)


def https_port(directory: Path, address: tuple[str, int]) -> str:
    """Squid's `https_port` line for the certificate `parent_pki` wrote."""
    return (f"https_port {address[0]}:{address[1]} tls-cert={directory / 'parent.pem'}"
            f" tls-key={directory / 'parent.key'}")


def squid_logged(squid: ReferenceProxy, *texts: str, after: int = 0) -> None:
    """Wait until Squid's access log holds each of `texts` past offset `after`
    (Squid writes a CONNECT's line when the tunnel ends)."""
    deadline = time.monotonic() + 10
    while not all(text in squid.access_log.read_text()[after:] for text in texts):
        assert time.monotonic() < deadline, squid.access_log.read_text()[after:]
        time.sleep(0.05)
