"""HTTPS to a fixed address while presenting a name: the way the proxy dials.

The client (and later the proxy) decides which address to dial on its own; the
name only travels in the TLS SNI, the certificate check and the Host header. No
resolver and no /etc/hosts entry are involved.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path


def tls_context(ca_pem: Path) -> ssl.SSLContext:
    """A client context that trusts only the testbed CA."""
    return ssl.create_default_context(cafile=str(ca_pem))


class AddressedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPSConnection to `address` that uses `name` for SNI, verification and Host."""

    def __init__(
        self,
        name: str,
        address: tuple[str, int],
        *,
        context: ssl.SSLContext,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(name, address[1], context=context, timeout=timeout)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        raw = socket.create_connection(self._address, self.timeout)
        try:
            self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise


@dataclass(frozen=True)
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def https_request(
    name: str,
    address: tuple[str, int],
    path: str,
    *,
    ca_pem: Path,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Response:
    """One request, redirects not followed, whole body read."""
    conn = AddressedHTTPSConnection(name, address, context=tls_context(ca_pem), timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return Response(status=resp.status, headers=resp.headers, body=body)
    finally:
        conn.close()
