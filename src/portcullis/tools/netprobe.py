"""The network steps of `portcullis check` up to a connected socket: resolve,
connect (directly or with CONNECT through a proxy); tools/tlsprobe.py does the
TLS handshake and the HTTP request on it.

Plain blocking sockets with timeouts, run in threads by the caller: each step
either returns or raises `Problem`, whose `kind` says what kind of failure it
was. The kind is what lets `check` tell "a firewall drops the packets" from "the
proxy's policy refused the name" from "the proxy could not reach the name".
"""

from __future__ import annotations

import base64
import errno
import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import unquote, urlsplit

from portcullis.basics.errors import ToolError
from portcullis.basics.hostport import format_hostport
from portcullis.tools.noproxy import NoProxy
from portcullis.tools.tlsbridge import bridge

# Connect failures that mean "a router or firewall answered that it will not".
_UNREACHABLE = (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.EACCES,
                errno.EPERM)
_MAX_HEAD = 16384


class Kind(StrEnum):
    """What went wrong, as the JSON output names it."""

    DNS = "dns"
    TIMEOUT = "timeout"  # no answer at all: packets dropped
    REFUSED = "refused"  # TCP RST
    UNREACHABLE = "unreachable"  # ICMP unreachable / no route / local firewall reject
    RESET = "reset"  # connection reset after it was established
    NETWORK = "network"  # any other socket error
    TLS_CERT = "tls_cert"  # the certificate is not valid for the name
    TLS = "tls"  # the handshake failed otherwise
    HTTP = "http"  # an HTTP answer that a registry would not give
    AUTH = "auth"  # the registry wants credentials; the network path works
    PROXY_REFUSED = "proxy_refused"  # the proxy's policy said no
    PROXY_UPSTREAM = "proxy_upstream"  # the proxy tried and could not reach the name
    PROXY_UNREACHABLE = "proxy_unreachable"  # the proxy itself cannot be reached
    PROXY_TLS = "proxy_tls"  # TLS to an https:// proxy failed (its certificate, mostly)


class Problem(ToolError):
    """A failed step: `kind` classifies it, `reason`/`rule` come from Portcullis."""

    def __init__(self, kind: Kind, message: str, *, status: int | None = None,
                 reason: str | None = None, rule: str | None = None,
                 address: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.reason = reason
        self.rule = rule
        self.address = address


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    authorization: str | None = None  # "Basic ..." from user:password in the URL
    scheme: str = "http"  # https: TLS to the proxy, the CONNECT inside it

    @property
    def url(self) -> str:
        return f"{self.scheme}://{format_hostport(self.host, self.port)}"


# A proxy URL without a port means what it means to containerd and CRI-O (Go's
# net/http: the scheme's port), since `check` answers for them.
_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_proxy(text: str) -> Proxy:
    """`http[s]://[user:pass@]host[:port]`, or a bare `host:port` as curl accepts."""
    url = urlsplit(text if "://" in text else f"http://{text}")
    if url.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"proxy {text!r}: write http://HOST:PORT or https://HOST:PORT "
                         "(CONNECT over TCP or over TLS)")
    if not url.hostname:
        raise ValueError(f"proxy {text!r} names no host; write {url.scheme}://HOST:PORT")
    try:
        port = url.port or _DEFAULT_PORTS[url.scheme]
    except ValueError:
        raise ValueError(f"proxy {text!r}: the port is not a number from 1 to 65535") from None
    authorization = None
    if url.username is not None:
        pair = f"{unquote(url.username)}:{unquote(url.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return Proxy(url.hostname, port, authorization, url.scheme)


@dataclass(frozen=True)
class Route:
    """How this node reaches the outside: directly, or through an HTTP proxy."""

    context: ssl.SSLContext
    proxy: Proxy | None = None
    overrides: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # --resolve
    timeout: float = 5.0
    dns_timeout: float = 5.0
    no_proxy: NoProxy = field(default_factory=lambda: NoProxy.parse(""))
    proxy_context: ssl.SSLContext | None = None  # verifies an https:// proxy

    def proxy_for(self, name: str, port: int) -> tuple[Proxy | None, str | None]:
        """The proxy `name:port` goes through, or None and why it goes direct
        (the NO_PROXY entry that matched; None when there is no proxy at all)."""
        if self.proxy is None:
            return None, None
        why = self.no_proxy.bypass(name, port)
        return (None, why) if why is not None else (self.proxy, None)


def _getaddrinfo(name: str, port: int, out: list[object]) -> None:
    try:
        out.append(socket.getaddrinfo(name, port, type=socket.SOCK_STREAM))
    except OSError as exc:
        out.append(exc)


def resolve(route: Route, name: str, port: int) -> list[str]:
    """The addresses the node's own resolver gives (or `--resolve` overrides)."""
    if name in route.overrides:
        return list(route.overrides[name])
    # getaddrinfo has no timeout of its own: run it in a daemon thread that a
    # hung resolver may keep, so the check still ends on time.
    out: list[object] = []
    thread = threading.Thread(target=_getaddrinfo, args=(name, port, out), daemon=True)
    thread.start()
    thread.join(route.dns_timeout)
    if not out:
        raise Problem(Kind.DNS, f"no answer within {route.dns_timeout:g} s")
    result = out[0]
    if isinstance(result, OSError):
        text = result.strerror if isinstance(result, socket.gaierror) else str(result)
        raise Problem(Kind.DNS, text or "lookup failed")
    assert isinstance(result, list)
    return list(dict.fromkeys(str(info[4][0]) for info in result))


def classify_error(exc: OSError, what: str, timeout: float) -> Problem:
    if isinstance(exc, TimeoutError | socket.timeout):
        return Problem(Kind.TIMEOUT, f"{what} timed out after {timeout:g} s")
    if isinstance(exc, ConnectionRefusedError):
        return Problem(Kind.REFUSED, f"{what} refused")
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return Problem(Kind.RESET, f"{what} reset")
    if exc.errno in _UNREACHABLE:
        return Problem(Kind.UNREACHABLE, f"{what}: {exc.strerror}")
    return Problem(Kind.NETWORK, f"{what}: {exc.strerror or exc}")


def connect_direct(route: Route, addresses: list[str], port: int) -> tuple[socket.socket, str]:
    """TCP to the first address that answers, as clients do; the socket and that address."""
    first: Problem | None = None
    for address in addresses:
        try:
            sock = socket.create_connection((address, port), timeout=route.timeout)
        except OSError as exc:
            problem = classify_error(exc, f"TCP to {format_hostport(address, port)}", route.timeout)
            problem.address = address
            first = first or problem
            continue
        return sock, address
    if first is None:
        raise Problem(Kind.DNS, "no addresses to connect to")
    raise first


def _read_head(sock: socket.socket) -> bytes:
    # Byte by byte: after a 200 the next bytes are the server's TLS, which must
    # stay in the socket for the handshake.
    head = bytearray()
    while not head.endswith(b"\r\n\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
        if len(head) > _MAX_HEAD:
            raise Problem(Kind.HTTP, "the proxy sent an answer head over 16 KiB")
    return bytes(head)


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(lines[0][:80])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip().lower()] = value.strip()
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers


def connect_via_proxy(route: Route, name: str, port: int) -> socket.socket:
    """`CONNECT name:port` through the proxy; the tunnel, or a Problem saying who said no."""
    proxy = route.proxy
    assert proxy is not None
    where = format_hostport(proxy.host, proxy.port)
    try:
        sock: socket.socket = socket.create_connection((proxy.host, proxy.port),
                                                       timeout=route.timeout)
    except OSError as exc:
        inner = classify_error(exc, f"TCP to the proxy {where}", route.timeout)
        raise Problem(Kind.PROXY_UNREACHABLE, inner.message) from None
    if proxy.scheme == "https":
        sock = _tls_to_proxy(route, sock, proxy)
    try:
        request = f"CONNECT {name}:{port} HTTP/1.1\r\nHost: {name}:{port}\r\n"
        if proxy.authorization:
            request += f"Proxy-Authorization: {proxy.authorization}\r\n"
        sock.sendall((request + "\r\n").encode("ascii"))
        head = _read_head(sock)
        if not head:
            raise Problem(Kind.PROXY_UPSTREAM, "the proxy closed the connection without answering")
        status, text, headers = _parse_head(head)
    except Problem:
        sock.close()
        raise
    except ValueError as exc:
        sock.close()
        raise Problem(Kind.HTTP, f"the proxy answered something that is not HTTP: {exc}") from None
    except OSError as exc:
        sock.close()
        raise Problem(Kind.PROXY_UPSTREAM,
                      classify_error(exc, "waiting for the proxy's answer", route.timeout).message
                      ) from None
    if status == 200:
        return bridge(sock) if isinstance(sock, ssl.SSLSocket) else sock
    sock.close()
    reason, rule = headers.get("x-portcullis-reason"), headers.get("x-portcullis-rule")
    if rule == "-":
        rule = None
    answer = f"{status} {text}".strip()
    # A 403/407 is the proxy's own decision; a 5xx is the proxy failing to
    # reach the name, which is a network problem behind the proxy.
    kind = Kind.PROXY_REFUSED if status in (403, 407) else Kind.PROXY_UPSTREAM
    if status not in (403, 407, 502, 503, 504):
        kind = Kind.HTTP
    message = f"refused: {status} {reason}" if reason else f"proxy answered {answer}"
    raise Problem(kind, message, status=status, reason=reason, rule=rule)


def _tls_to_proxy(route: Route, sock: socket.socket, proxy: Proxy) -> ssl.SSLSocket:
    context = route.proxy_context or ssl.create_default_context()
    what = f"TLS to the proxy {format_hostport(proxy.host, proxy.port)}"
    try:
        return context.wrap_socket(sock, server_hostname=proxy.host)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise Problem(Kind.PROXY_TLS, f"{what}: {exc.verify_message or exc}") from None
    except ssl.SSLError as exc:
        sock.close()
        raise Problem(Kind.PROXY_TLS, f"{what}: handshake failed: {exc.reason or exc}") from None
    except OSError as exc:
        sock.close()
        raise Problem(Kind.PROXY_TLS, classify_error(exc, what, route.timeout).message) from None


def open_tunnel(route: Route, name: str, port: int) -> tuple[socket.socket, str | None]:
    """A TCP stream to name:port the way this node reaches it; (socket, address dialled)."""
    proxy, _ = route.proxy_for(name, port)
    if proxy is not None:
        return connect_via_proxy(route, name, port), None
    return connect_direct(route, resolve(route, name, port), port)
