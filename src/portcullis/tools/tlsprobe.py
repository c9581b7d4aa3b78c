"""The TLS and HTTP steps of `portcullis check` on a connected socket: the
handshake (the certificate must be valid for the name) and one HTTP request.
Each returns or raises `netprobe.Problem`, like the steps before them."""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from portcullis.tools.netprobe import Kind, Problem, Route, classify_error


@dataclass(frozen=True)
class CertInfo:
    subject: str
    issuer: str
    not_after: datetime

    @property
    def days_left(self) -> int:
        return (self.not_after - datetime.now(UTC)).days


@dataclass(frozen=True)
class Reply:
    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes  # at most the bytes asked for


def _cert_info(cert: dict[str, object]) -> CertInfo:
    def flat(field_name: str) -> str:
        rdns = cert.get(field_name, ())
        assert isinstance(rdns, tuple)
        return ", ".join(f"{k}={v}" for rdn in rdns for k, v in rdn)

    not_after = str(cert.get("notAfter", ""))
    expires = datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), UTC)
    return CertInfo(flat("subject"), flat("issuer"), expires)


def tls_handshake(route: Route, sock: socket.socket, name: str) -> tuple[ssl.SSLSocket, CertInfo]:
    """Handshake presenting `name` in SNI; the certificate must be valid for it."""
    sock.settimeout(route.timeout)
    try:
        tls = route.context.wrap_socket(sock, server_hostname=name)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise Problem(Kind.TLS_CERT, exc.verify_message or str(exc)) from None
    except ssl.SSLError as exc:
        sock.close()
        raise Problem(Kind.TLS, f"handshake failed: {exc.reason or exc}") from None
    except OSError as exc:
        sock.close()
        problem = classify_error(exc, "TLS handshake", route.timeout)
        if problem.kind is Kind.NETWORK:  # e.g. EOF: the peer hung up mid-handshake
            problem = Problem(Kind.RESET, f"TLS handshake: {exc}")
        raise problem from None
    cert = tls.getpeercert()
    assert cert is not None  # verified contexts always have one
    return tls, _cert_info(dict(cert))


class _OnSocket(http.client.HTTPSConnection):
    """http.client on a socket that is already connected and encrypted."""

    def __init__(self, name: str, port: int, tls: ssl.SSLSocket, timeout: float) -> None:
        super().__init__(name, port, timeout=timeout)
        self.sock = tls

    def connect(self) -> None:  # pragma: no cover - the socket is given
        raise http.client.NotConnected("the socket is given")


def http_request(route: Route, tls: ssl.SSLSocket, name: str, port: int, method: str,
                 target: str, headers: Mapping[str, str], max_body: int = 4096) -> Reply:
    """One request on `tls`; reads at most `max_body` bytes of the body, then closes."""
    conn = _OnSocket(name, port, tls, route.timeout)
    started = time.monotonic()
    try:
        conn.request(method, target, headers={"User-Agent": "portcullis-check", **headers,
                                              "Connection": "close"})
        resp = conn.getresponse()
        body = resp.read(max_body) if method != "HEAD" else b""
        return Reply(resp.status, resp.reason, resp.headers, body)
    except http.client.HTTPException as exc:
        raise Problem(Kind.HTTP, f"bad HTTP answer: {exc!r}") from None
    except OSError as exc:
        what = f"{method} {target}"
        waited = time.monotonic() - started
        raise classify_error(exc, what, round(waited, 1)) from None
    finally:
        conn.close()
