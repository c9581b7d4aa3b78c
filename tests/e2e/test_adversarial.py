"""Hostile requests against one running Portcullis (issue 8, item 2).

Every case checks four things: the answer (status, or a silent close after a
tunnel was opened), the reason in the decision log, that nothing was dialled
where nothing should be (the record's `dialed` is null and counting listeners
saw no connection, or, when a tunnel was dialled before the ClientHello could
be read, that the upstream received not one byte), and that an allowed request
still succeeds right after.

Layout (loopback only):
    127.0.80.1   Portcullis: explicit and admin listeners
    127.0.80.2   TLS upstream for the allowed names (counts connections and bytes)
    127.0.80.3   plain-HTTP echo server (counts connections)
    127.0.80.5   the proxy's DNS server (tests/support/dnsserver.py): A, AAAA, CNAME
    [::]:TRAP    a dual-stack listener that must never see a connection; every
                 name that resolves to a forbidden address is asked on its port
    127.0.0.1:TLS  the same, for the DNS rebinding case
"""

from __future__ import annotations

import contextlib
import errno
import json
import signal
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.support.dnsserver import DnsServer, Record
from tests.support.http import HEAD_END, ask, dial, open_tunnel, read_head, read_to_close
from tests.support.portcullis_proc import RunningPortcullis, policy_for, run_portcullis
from tests.support.servers import EchoServer, ThreadedServer, Trap, full_listener
from tests.support.tls_hellos import (
    build_message,
    real_hello,
    records,
    server_name,
    split_hello,
    with_extensions,
)

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]

PROXY_IP = "127.0.80.1"
UPSTREAM_IP = "127.0.80.2"
ECHO_IP = "127.0.80.3"
DNS_IP = "127.0.80.5"
OTHER_ADMIN_CLIENT = "127.0.80.9"  # inside the source group, outside admin_allow
OUTSIDE_CLIENT = "127.200.0.1"  # outside every source group (workers = 127.0.0.0/9)

REGISTRY = "registry.adv.test"
CHAIN_OK = "chain-ok.adv.test"  # CNAME -> CNAME -> the upstream
REBIND = "rebind.adv.test"
WEB = "web.adv.test"
# Allowed names whose addresses are forbidden: name -> records.
FORBIDDEN: dict[str, list[Record]] = {
    "loopback.adv.test": [Record("A", "127.0.0.1")],
    "metadata.adv.test": [Record("A", "169.254.169.254")],
    "private.adv.test": [Record("A", "10.0.0.1")],
    "mapped.adv.test": [Record("AAAA", "::ffff:127.0.0.1")],
    "nat64.adv.test": [Record("AAAA", "64:ff9b::7f00:1")],
    "own.adv.test": [Record("A", PROXY_IP)],
    "chain.adv.test": [Record("CNAME", "hop1.cdn.example")],
    "unspecified.adv.test": [Record("A", "0.0.0.0")],
    "cgnat.adv.test": [Record("A", "100.64.0.1")],
    "multicast.adv.test": [Record("A", "224.0.0.1")],
    "v6loopback.adv.test": [Record("AAAA", "::1")],
    "ula.adv.test": [Record("AAAA", "fd00::1")],
    "sixtofour.adv.test": [Record("AAAA", "2002:7f00:1::1")],
    "teredo.adv.test": [Record("AAAA", "2001:0:7f00:1::1")],
    "zero-net.adv.test": [Record("A", "0.1.2.3")],
}
CERT_NAMES = [REGISTRY, CHAIN_OK, REBIND, "mixed.adv.test"]
ALLOWED = [*CERT_NAMES, WEB, "missing.adv.test", *FORBIDDEN]


# --- real servers ---------------------------------------------------------------


class TlsUpstream(ThreadedServer):
    """A TLS server answering `ok` to one request per connection.

    It first waits for a byte without consuming it, so it can tell a connection
    that carried data from one the proxy dialled and closed unused.
    """

    def __init__(self, host: str, ca: trustme.CA, names: list[str]) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*names).configure_cert(self.context)
        self.context.sni_callback = self._note_sni
        self.finished = self.with_data = 0
        self.snis: list[str | None] = []
        super().__init__(socket.create_server((host, 0)))

    def _note_sni(self, _sock: object, name: str | None, _ctx: object) -> None:
        with self.lock:
            self.snis.append(name)

    def serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            with contextlib.suppress(OSError):
                if not conn.recv(1, socket.MSG_PEEK):
                    return
                with self.lock:
                    self.with_data += 1
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    if not read_head(tls)[0].endswith(HEAD_END):
                        return
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                b"Connection: close\r\n\r\nok")
        finally:
            conn.close()
            with self.lock:
                self.finished += 1

    def settle(self) -> None:
        """Wait until every accepted connection has been handled."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with self.lock:
                if self.finished == self.accepted:
                    return
            time.sleep(0.01)
        raise AssertionError("the upstream still serves a connection after 10 s")

    def close(self) -> None:
        self.listener.close()


@dataclass
class Env:
    proxy: RunningPortcullis
    dns: DnsServer
    ca: trustme.CA
    upstream: TlsUpstream
    echo: EchoServer
    trap: Trap
    loopback_trap: Trap  # 127.0.0.1 on the upstream's port, for the rebinding case
    zone: dict[str, list[Record]]

    def counts(self) -> tuple[int, int, int, int]:
        self.upstream.settle()
        return (self.trap.accepted, self.loopback_trap.accepted, self.upstream.accepted,
                self.echo.accepted)

    def fill(self, text: str) -> bytes:
        return (text.replace("{TLS}", str(self.upstream.port))
                .replace("{ECHO}", str(self.echo.port))
                .replace("{TRAP}", str(self.trap.port))
                .replace("{REG}", REGISTRY).replace("{WEB}", WEB)).encode("latin-1")


def upstream_with_loopback_twin(ca: trustme.CA) -> tuple[TlsUpstream, Trap]:
    """The upstream, and a trap on 127.0.0.1 at the upstream's port (the rebinding case)."""
    # Another process on the machine may hold that port number on 127.0.0.1
    # (a client's source port, another suite's listener): draw another port.
    for _ in range(20):
        upstream = TlsUpstream(UPSTREAM_IP, ca, CERT_NAMES)
        try:
            return upstream, Trap("127.0.0.1", upstream.port)
        except OSError as exc:
            upstream.close()
            if exc.errno != errno.EADDRINUSE:
                raise
    raise RuntimeError("no port free on both the upstream's address and 127.0.0.1")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    ca = trustme.CA()
    upstream, loopback_trap = upstream_with_loopback_twin(ca)
    echo = EchoServer(ECHO_IP)
    trap = Trap("::", dual_stack=True)
    zone: dict[str, list[Record]] = {
        REGISTRY: [Record("A", UPSTREAM_IP)],
        WEB: [Record("A", ECHO_IP)],
        CHAIN_OK: [Record("CNAME", "a.cdn.example")],
        "a.cdn.example": [Record("CNAME", "b.cdn.example")],
        "b.cdn.example": [Record("A", UPSTREAM_IP)],
        REBIND: [Record("A", UPSTREAM_IP, ttl=0)],
        "mixed.adv.test": [Record("A", "10.0.0.1"), Record("A", UPSTREAM_IP)],
        **FORBIDDEN,
        "hop1.cdn.example": [Record("CNAME", "hop2.cdn.example")],
        "hop2.cdn.example": [Record("A", "127.0.0.1")],
    }
    policy = policy_for({}, [], sources=("127.0.0.0/9",), allow_ranges=("127.0.80.0/24",))
    with DnsServer(zone, host=DNS_IP) as dns:
        policy.update({
            "listen": {"explicit": f"{PROXY_IP}:0", "admin": f"{PROXY_IP}:0"},
            "rules": [{"name": "adv", "from": ["workers"], "to": ALLOWED,
                       "ports": [upstream.port, echo.port, trap.port]}],
            "tls_ports": [upstream.port],
            "admin_allow": ["127.0.0.1/32"],
            "limits": {"header_timeout": 5, "client_hello_timeout": 4, "connect_timeout": 2,
                       "drain_timeout": 5},
        })
        policy["resolver"].update(
            {"servers": [dns.server], "timeout": 2, "min_ttl": 0, "negative_ttl": 0}
        )
        try:
            with run_portcullis(tmp_path_factory.mktemp("adversarial"), policy) as proxy:
                yield Env(proxy, dns, ca, upstream, echo, trap, loopback_trap, zone)
        finally:
            for server in (upstream, echo, trap, loopback_trap):
                server.close()


# --- client helpers ---------------------------------------------------------------


def send_raw(env: Env, raw: bytes) -> bytes:
    with dial(env.proxy.explicit) as sock:
        # The proxy may answer and close before a huge head is all sent.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)
        return read_to_close(sock)


def decisions_since(env: Env, mark: int, count: int = 1) -> list[dict[str, object]]:
    deadline = time.monotonic() + 5
    while True:
        new = env.proxy.decisions()[mark:]
        if len(new) >= count or time.monotonic() > deadline:
            return new
        time.sleep(0.02)


def tls_client(env: Env) -> ssl.SSLContext:
    context = ssl.create_default_context()
    env.ca.configure_trust(context)
    return context


def tls_get(env: Env, name: str, target: str | None = None) -> bytes:
    """CONNECT, TLS to `name` through the tunnel, GET /: the response bytes."""
    sock = open_tunnel(env.proxy.explicit, target or f"{name}:{env.upstream.port}")
    with tls_client(env).wrap_socket(sock, server_hostname=name) as tls:
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
        reply = b""
        with contextlib.suppress(ssl.SSLEOFError):
            while chunk := tls.recv(4096):
                reply += chunk
    return reply


def still_serving(env: Env) -> None:
    """An allowed request right after a hostile one is served end to end."""
    mark = len(env.proxy.decisions())
    reply = tls_get(env, REGISTRY)
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"ok"), reply
    [record] = decisions_since(env, mark)
    assert (record["decision"], record["reason"], record["dialed"]) == (
        "allow", "rule_allow", f"{UPSTREAM_IP}:{env.upstream.port}")


def assert_refused(env: Env, answer: bytes, mark: int, before: tuple[int, ...],
                   status: int, reason: str) -> dict[str, object]:
    head = answer.partition(b"\r\n\r\n")[0]
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:300]
    assert f"\r\nX-Portcullis-Reason: {reason}\r\n".encode() in head + b"\r\n"
    # The answer head stays printable ASCII whatever the client sent.
    assert all(32 <= b < 127 or b in (13, 10) for b in head), head
    [record] = decisions_since(env, mark)
    assert (record["decision"], record["reason"]) == ("deny", reason), record
    assert record["dialed"] is None, record
    assert env.counts() == before, "something was dialled"
    still_serving(env)
    return record


# --- 1. request heads: smuggling, framing, bytes, sizes, authorities ------------

HUGE = "X-Big: " + "a" * 20000
MANY = "".join(f"X-{i}: v\r\n" for i in range(101))
GET_WEB = "GET http://{WEB}:{ECHO}/ HTTP/1.1\r\nHost: {WEB}:{ECHO}\r\n"
POST_WEB = "POST http://{WEB}:{ECHO}/ HTTP/1.1\r\nHost: {WEB}:{ECHO}\r\n"
CONNECT_REG = "CONNECT {REG}:{TLS} HTTP/1.1\r\nHost: {REG}:{TLS}\r\n"
HOMOGRAPH = "registry.adv.test".replace("e", "\u0435", 1)  # a Cyrillic ie for the first e

HEAD_CASES: list[tuple[str, str, int, str]] = [
    # Request smuggling: every framing two parsers could read differently.
    ("cl-and-te", POST_WEB + "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
     400, "bad_request"),
    ("te-and-cl", POST_WEB + "Transfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nG",
     400, "bad_request"),
    ("two-cl-differing", POST_WEB + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
     400, "bad_request"),
    ("two-cl-equal", POST_WEB + "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
     400, "bad_request"),
    ("cl-list", POST_WEB + "Content-Length: 5, 5\r\n\r\nhello", 400, "bad_request"),
    ("cl-signed", POST_WEB + "Content-Length: +5\r\n\r\nhello", 400, "bad_request"),
    ("te-obfuscated", POST_WEB + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
     400, "bad_request"),
    ("te-two-codings", POST_WEB + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
     400, "bad_request"),
    ("te-twice", POST_WEB + "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
     400, "bad_request"),
    ("te-in-http10", "POST http://{WEB}:{ECHO}/ HTTP/1.0\r\nHost: {WEB}:{ECHO}\r\n"
     "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "bad_request"),
    ("space-before-colon", POST_WEB + "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
     400, "bad_request"),
    ("obs-fold", GET_WEB + "X-A: a\r\n b\r\n\r\n", 400, "bad_request"),
    ("obs-fold-after-host", "GET http://{WEB}:{ECHO}/ HTTP/1.1\r\nHost: {WEB}:{ECHO}\r\n"
     "\tevil.adv.test\r\n\r\n", 400, "bad_request"),
    ("bare-lf", "GET http://{WEB}:{ECHO}/ HTTP/1.1\nHost: {WEB}:{ECHO}\n\n",
     400, "bad_request"),
    ("bare-lf-one-header", GET_WEB + "X-A: a\nX-B: b\r\n\r\n", 400, "bad_request"),
    ("bare-cr", GET_WEB + "X-A: a\rb\r\n\r\n", 400, "bad_request"),
    # Bytes that do not belong in a head (NUL, controls, DEL, ESC).
    ("nul-in-value", GET_WEB + "X-A: a\x00b\r\n\r\n", 400, "bad_request"),
    ("nul-in-target", "CONNECT regis\x00try.adv.test:{TLS} HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ("ctl-0x01-in-value", GET_WEB + "X-A: \x01\r\n\r\n", 400, "bad_request"),
    ("del-in-name", GET_WEB + "X-\x7f: a\r\n\r\n", 400, "bad_request"),
    ("esc-in-connect-host", "CONNECT evil\x1b[31m.adv.test:{TLS} HTTP/1.1\r\n\r\n",
     400, "bad_request"),
    ("quote-in-connect-host", 'CONNECT a"b.adv.test:{TLS} HTTP/1.1\r\n\r\n',
     400, "bad_request"),
    # Sizes.
    ("huge-header", GET_WEB + HUGE + "\r\n\r\n", 431, "header_too_large"),
    ("huge-target", "CONNECT " + "a" * 17000 + ":443 HTTP/1.1\r\n\r\n", 431, "header_too_large"),
    ("101-headers", GET_WEB + MANY + "\r\n", 400, "bad_request"),
    ("header-without-colon", GET_WEB + "NoColonHere\r\n\r\n", 400, "bad_request"),
    # Absolute URI against Host.
    ("host-disagrees", "GET http://{WEB}:{ECHO}/ HTTP/1.1\r\nHost: evil.adv.test\r\n\r\n",
     400, "bad_request"),
    ("host-port-disagrees", "GET http://{WEB}:{ECHO}/ HTTP/1.1\r\nHost: {WEB}:1\r\n\r\n",
     400, "bad_request"),
    ("two-host-headers", GET_WEB + "Host: evil.adv.test\r\n\r\n", 400, "bad_request"),
    ("origin-form", "GET / HTTP/1.1\r\nHost: {WEB}:{ECHO}\r\n\r\n", 400, "bad_request"),
    ("https-absolute", "GET https://{WEB}:{ECHO}/ HTTP/1.1\r\nHost: {WEB}:{ECHO}\r\n\r\n",
     400, "bad_request"),
    ("userinfo-in-uri", "GET http://user@{WEB}:{ECHO}/ HTTP/1.1\r\nHost: {WEB}:{ECHO}\r\n\r\n",
     400, "bad_request"),
    ("fragment-in-uri", "GET http://{WEB}:{ECHO}/#x HTTP/1.1\r\nHost: {WEB}:{ECHO}\r\n\r\n",
     400, "bad_request"),
    ("plain-port-not-allowed", "GET http://{WEB}:8080/ HTTP/1.1\r\nHost: {WEB}:8080\r\n\r\n",
     403, "port_not_allowed"),
    # CONNECT authorities.
    ("connect-no-port", "CONNECT {REG} HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ("connect-empty-port", "CONNECT {REG}: HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ("connect-empty-host", "CONNECT :{TLS} HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ("connect-port-0", "CONNECT {REG}:0 HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ("connect-port-65536", "CONNECT {REG}:65536 HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ("connect-port-wraps", "CONNECT {REG}:4295032063 HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ("connect-two-ports", "CONNECT {REG}:{TLS}:{TLS} HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ("connect-ipv4-literal", "CONNECT 127.0.0.1:{TRAP} HTTP/1.1\r\n\r\n", 403, "no_rule"),
    ("connect-upstream-literal", f"CONNECT {UPSTREAM_IP}:{{TLS}} HTTP/1.1\r\n\r\n",
     403, "no_rule"),
    ("connect-ipv6-literal", "CONNECT [::1]:{TRAP} HTTP/1.1\r\n\r\n", 403, "no_rule"),
    ("connect-mapped-literal", "CONNECT [::ffff:127.0.0.1]:{TRAP} HTTP/1.1\r\n\r\n",
     403, "no_rule"),
    ("connect-ipv6-unbracketed", "CONNECT ::1:{TRAP} HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ("connect-zone-id", "CONNECT [fe80::1%25lo]:{TRAP} HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ("connect-userinfo", "CONNECT user@{REG}:{TLS} HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ("connect-userinfo-confusion", "CONNECT {REG}:{TLS}@evil.adv.test:{TLS} HTTP/1.1\r\n\r\n",
     400, "bad_request"),
    ("connect-percent-encoded", "CONNECT registry%2eadv.test:{TLS} HTTP/1.1\r\n\r\n",
     400, "bad_request"),
    ("connect-idn-raw-utf8", "CONNECT " + HOMOGRAPH.encode().decode("latin-1") +
     ":{TLS} HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ("connect-idn-homograph-punycode",
     "CONNECT " + HOMOGRAPH.encode("idna").decode() + ":{TLS} HTTP/1.1\r\n\r\n", 403, "no_rule"),
    ("connect-two-trailing-dots", "CONNECT {REG}..:{TLS} HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ("connect-empty-label", "CONNECT registry..adv.test:{TLS} HTTP/1.1\r\n\r\n",
     400, "bad_request"),
    ("connect-300-char-name", "CONNECT " + ".".join(["a" * 59] * 5) + ".adv.test:{TLS} HTTP/1.1"
     "\r\n\r\n", 400, "bad_request"),
    ("connect-64-char-label", "CONNECT " + "a" * 64 + ".adv.test:{TLS} HTTP/1.1\r\n\r\n",
     400, "bad_request"),
    ("connect-numeric-shorthand", "CONNECT 127.1:{TRAP} HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ("connect-hex-host", "CONNECT 0x7f000001:{TRAP} HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ("connect-decimal-host", "CONNECT 2130706433:{TRAP} HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ("connect-octal-quad", "CONNECT 0177.0.0.1:{TRAP} HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ("connect-url-form", "CONNECT http://{REG}:{TLS}/ HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ("connect-port-not-allowed", "CONNECT {REG}:22 HTTP/1.1\r\n\r\n", 403, "port_not_allowed"),
    ("connect-unknown-name", "CONNECT evil.adv.test:{TLS} HTTP/1.1\r\n\r\n", 403, "no_rule"),
    ("connect-suffix-trick", "CONNECT {REG}.evil.example:{TLS} HTTP/1.1\r\n\r\n", 403, "no_rule"),
    ("connect-two-host-headers", CONNECT_REG + "Host: evil.adv.test\r\n\r\n", 400, "bad_request"),
    ("connect-with-content-length", CONNECT_REG + "Content-Length: 5\r\n\r\nhello",
     400, "bad_request"),
    ("connect-with-cl-and-te", CONNECT_REG + "Content-Length: 5\r\nTransfer-Encoding: chunked"
     "\r\n\r\n", 400, "bad_request"),
    # Request lines.
    ("unknown-method", "BREW http://{WEB}:{ECHO}/ HTTP/1.1\r\nHost: {WEB}:{ECHO}\r\n\r\n",
     501, "bad_request"),
    ("lowercase-connect", "connect {REG}:{TLS} HTTP/1.1\r\n\r\n", 501, "bad_request"),
    ("http-1.2", "CONNECT {REG}:{TLS} HTTP/1.2\r\n\r\n", 400, "bad_request"),
    ("http-0.9", "GET /\r\n\r\n", 400, "bad_request"),
    ("double-space", "CONNECT  {REG}:{TLS} HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ("tls-to-the-proxy-port", "\x16\x03\x01\x00\x05hello", 400, "bad_request"),
]


@pytest.mark.parametrize(("raw", "status", "reason"),
                         [c[1:] for c in HEAD_CASES], ids=[c[0] for c in HEAD_CASES])
def test_hostile_request_head(env: Env, raw: str, status: int, reason: str) -> None:
    mark, before = len(env.proxy.decisions()), env.counts()
    answer = send_raw(env, env.fill(raw))
    assert_refused(env, answer, mark, before, status, reason)


def test_megabyte_header_is_answered_431_not_reset(env: Env) -> None:
    # The proxy stops reading at its limit; the answer must still reach a client
    # that is busy sending (a close with unread bytes would reset it away).
    mark, before = len(env.proxy.decisions()), env.counts()
    raw = env.fill(GET_WEB) + b"X-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    answer = send_raw(env, raw)
    assert_refused(env, answer, mark, before, 431, "header_too_large")


def test_pipelined_request_to_a_forbidden_host_is_decided_on_its_own(env: Env) -> None:
    """A second request hidden after an allowed one is a new decision, not a passenger."""
    mark, before = len(env.proxy.decisions()), env.counts()
    raw = env.fill(POST_WEB + "Content-Length: 5\r\n\r\nhello"
                   "GET http://evil.adv.test/ HTTP/1.1\r\nHost: evil.adv.test\r\n\r\n")
    answer = send_raw(env, raw)
    first, _, rest = answer.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert b"HTTP/1.1 403 " in rest and b"X-Portcullis-Reason: no_rule" in rest
    allowed, denied = decisions_since(env, mark, 2)
    assert (allowed["host"], allowed["decision"]) == (WEB, "allow")
    assert (denied["host"], denied["decision"], denied["reason"], denied["dialed"]) == (
        "evil.adv.test", "deny", "no_rule", None)
    assert env.counts()[:3] == before[:3] and env.counts()[3] == before[3] + 1
    still_serving(env)


def test_second_head_with_cl_and_te_on_a_kept_alive_connection(env: Env) -> None:
    mark, before = len(env.proxy.decisions()), env.counts()
    raw = env.fill(GET_WEB + "\r\n" + POST_WEB +
                   "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG")
    answer = send_raw(env, raw)
    first, _, rest = answer.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 ")
    assert b"HTTP/1.1 400 " in rest and b"X-Portcullis-Reason: bad_request" in rest
    allowed, refused = decisions_since(env, mark, 2)
    assert allowed["decision"] == "allow"
    assert (refused["decision"], refused["reason"], refused["dialed"]) == (
        "deny", "bad_request", None)
    assert env.counts()[3] == before[3] + 1  # the first request only
    still_serving(env)


def test_bad_chunk_size_ends_the_request_without_a_handler_failure(env: Env) -> None:
    mark = len(env.proxy.decisions())
    errors_before = len(env.proxy.records("error"))
    raw = env.fill(POST_WEB + "Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\n")
    with dial(env.proxy.explicit) as sock:
        sock.sendall(raw)
        answer = read_to_close(sock)
    # The head was fine and decided; the body is not: the connection ends with
    # no upstream answer but the proxy's 400 saying why, the close record says
    # why too, and the proxy logs no failure of its own.
    assert answer.startswith(b"HTTP/1.1 400 ") and b"request body: " in answer, answer[:300]
    [record] = decisions_since(env, mark)
    assert record["decision"] == "allow"
    close = env.proxy.wait_for_log(lambda r: r.get("event") == "close" and r["id"] == record["id"])
    assert close["close_reason"] == "bad_request" and close["bytes_down"] == 0
    assert len(env.proxy.records("error")) == errors_before, env.proxy.records("error")[-1:]
    still_serving(env)


@pytest.mark.parametrize("listed", ["content-length", "host", "Transfer-Encoding"])
def test_framing_header_named_in_connection_is_still_forwarded(env: Env, listed: str) -> None:
    # `Connection: content-length` must not strip the field h11 frames the
    # upstream request with (nor the Host it routes on): the request is
    # forwarded whole and the proxy logs no failure of its own.
    errors_before = len(env.proxy.records("error"))
    framing = ("Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
               if listed == "Transfer-Encoding" else "Content-Length: 5\r\n\r\nhello")
    raw = env.fill(POST_WEB + f"Connection: close, {listed}\r\n" + framing)
    answer = send_raw(env, raw)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    seen = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert seen["body_len"] == 5
    assert any(name.lower() == "host" for name, _ in seen["headers"])
    assert len(env.proxy.records("error")) == errors_before, env.proxy.records("error")[-1:]


# --- 2. names that resolve somewhere forbidden --------------------------------------


@pytest.mark.parametrize("name", list(FORBIDDEN))
def test_allowed_name_resolving_to_a_forbidden_address(env: Env, name: str) -> None:
    mark, before = len(env.proxy.decisions()), env.counts()
    answer = ask(env.proxy.explicit, f"{name}:{env.trap.port}", to_close=True).data
    record = assert_refused(env, answer, mark, before, 403, "address_forbidden")
    assert record["resolved"], record  # it was resolved and then refused


def test_mixed_answer_dials_only_the_permitted_address(env: Env) -> None:
    mark = len(env.proxy.decisions())
    reply = tls_get(env, "mixed.adv.test")
    assert reply.endswith(b"ok")
    [record] = decisions_since(env, mark)
    assert sorted(record["resolved"]) == ["10.0.0.1", UPSTREAM_IP]  # type: ignore[type-var]
    assert record["dialed"] == f"{UPSTREAM_IP}:{env.upstream.port}"
    still_serving(env)


def test_cname_chain_to_a_permitted_address_works(env: Env) -> None:
    mark = len(env.proxy.decisions())
    assert tls_get(env, CHAIN_OK).endswith(b"ok")
    [record] = decisions_since(env, mark)
    assert (record["host"], record["decision"]) == (CHAIN_OK, "allow")
    assert record["dialed"] == f"{UPSTREAM_IP}:{env.upstream.port}"


def test_dns_rebinding_to_loopback_is_refused(env: Env) -> None:
    """The same name, TTL 0: first the upstream, then 127.0.0.1. The second
    connection is checked on its own answer, and the loopback service untouched."""
    assert tls_get(env, REBIND).endswith(b"ok")
    env.dns.set_records({**env.zone, REBIND: [Record("A", "127.0.0.1", ttl=0)]})
    try:
        mark, before = len(env.proxy.decisions()), env.counts()
        answer = ask(env.proxy.explicit, f"{REBIND}:{env.upstream.port}", to_close=True).data
        record = assert_refused(env, answer, mark, before, 403, "address_forbidden")
        assert record["resolved"] == ["127.0.0.1"]
    finally:
        env.dns.set_records(env.zone)


def test_name_without_an_answer_is_502_dns_failure(env: Env) -> None:
    mark, before = len(env.proxy.decisions()), env.counts()
    answer = ask(env.proxy.explicit, f"missing.adv.test:{env.upstream.port}", to_close=True).data
    assert_refused(env, answer, mark, before, 502, "dns_failure")


# --- 3. the ClientHello inside an allowed tunnel ---------------------------------------

REG_HELLO = real_hello(REGISTRY)


def hello_with_sni(*entries: tuple[int, bytes]) -> bytes:
    return with_extensions(REG_HELLO, {0: server_name(*entries)}, [])


def sslv2_hello() -> bytes:
    # SSLv2-compatible CLIENT-HELLO: 2-byte header with the high bit, type 1, TLS 1.0.
    body = b"\x01\x03\x01" + struct.pack("!HHH", 3, 0, 16) + b"\x00\x00\x2f" + b"\x11" * 16
    return struct.pack("!H", 0x8000 | len(body)) + body


def fragmented(flight: bytes, size: int) -> bytes:
    prefix, exts = split_hello(flight)
    return records(build_message(prefix, exts), size)


def hello_refused(env: Env, data: bytes, reason: str, *, per_byte: bool = False) -> None:
    """The tunnel is open (the upstream was dialled before the hello could be
    read); the hello must end it without one byte reaching the upstream."""
    mark = len(env.proxy.decisions())
    trap_before, upstream_data = env.trap.accepted, env.upstream.with_data
    sock = open_tunnel(env.proxy.explicit, f"{REGISTRY}:{env.upstream.port}")
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if per_byte:
                for i in range(len(data)):
                    sock.send(data[i : i + 1])
                    time.sleep(0.001)
            else:
                sock.sendall(data)
        answer = read_to_close(sock)
    assert answer == b"", answer[:200]  # closed, nothing relayed back
    [record] = decisions_since(env, mark)
    assert (record["decision"], record["reason"]) == ("deny", reason), record
    env.upstream.settle()
    assert env.upstream.with_data == upstream_data, "hello bytes reached the upstream"
    assert env.trap.accepted == trap_before
    still_serving(env)


TLS_CASES: list[tuple[str, Callable[[], bytes], str]] = [
    ("sni-differs", lambda: real_hello("evil.adv.test"), "sni_mismatch"),
    ("sni-another-allowed-name", lambda: real_hello(CHAIN_OK), "sni_mismatch"),
    ("sni-homograph", lambda: real_hello(HOMOGRAPH.encode("idna").decode()), "sni_mismatch"),
    ("sni-with-nul", lambda: hello_with_sni((0, REGISTRY.encode() + b"\x00.evil")),
     "sni_mismatch"),
    ("two-sni-entries", lambda: hello_with_sni((0, REGISTRY.encode()), (0, b"evil.adv.test")),
     "bad_request"),
    ("empty-sni", lambda: hello_with_sni((0, b"")), "bad_request"),
    ("non-ascii-sni", lambda: hello_with_sni((0, HOMOGRAPH.encode())), "bad_request"),
    ("no-sni", lambda: real_hello(None), "no_sni"),
    ("ech", lambda: with_extensions(REG_HELLO, {}, [(0xFE0D, b"\x00\x00\x01\x00\x01\x00")]),
     "ech_present"),
    ("duplicate-extension", lambda: with_extensions(REG_HELLO, {}, [(0x0010, b"\x00\x03\x02h2")]
                                                    * 2), "bad_request"),
    ("sslv2-hello", sslv2_hello, "not_tls"),
    ("plain-http-in-tunnel", lambda: b"GET / HTTP/1.1\r\nHost: registry.adv.test\r\n\r\n",
     "not_tls"),
    ("application-data-record", lambda: b"\x17\x03\x03\x00\x05hello", "not_tls"),
    ("records-of-7-bytes-sni-differs", lambda: fragmented(real_hello("evil.adv.test"), 7),
     "sni_mismatch"),
]


@pytest.mark.parametrize(("make", "reason"), [c[1:] for c in TLS_CASES],
                         ids=[c[0] for c in TLS_CASES])
def test_hostile_client_hello(env: Env, make: Callable[[], bytes], reason: str) -> None:
    hello_refused(env, make(), reason)


def test_hello_split_byte_by_byte_with_a_differing_sni(env: Env) -> None:
    hello_refused(env, real_hello("evil.adv.test"), "sni_mismatch", per_byte=True)


def test_hello_that_never_completes_times_out(env: Env) -> None:
    hello_refused(env, REG_HELLO[:40], "header_timeout")


def _handshake_over(sock: socket.socket, context: ssl.SSLContext, name: str,
                    first_flight: Callable[[bytes], None]) -> bytes:
    """A TLS handshake on `sock` through memory BIOs, so the first flight can be
    sent as the test likes (here: one byte per segment)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    first = True
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        data = outgoing.read()
        if data:
            if first:
                first_flight(data)
                first = False
            else:
                sock.sendall(data)
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        incoming.write(chunk)
    sock.sendall(outgoing.read())
    tls.write(f"GET / HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
    sock.sendall(outgoing.read())
    return _ReadBack(tls, incoming, sock).run()


@dataclass
class _ReadBack:
    tls: ssl.SSLObject
    incoming: ssl.MemoryBIO
    sock: socket.socket

    def run(self) -> bytes:
        reply = b""
        while True:
            try:
                chunk = self.tls.read(65536)
                if not chunk:
                    return reply
                reply += chunk
            except ssl.SSLWantReadError:
                data = self.sock.recv(65536)
                if not data:
                    return reply
                self.incoming.write(data)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return reply


def test_hello_split_byte_by_byte_with_the_right_sni_is_relayed(env: Env) -> None:
    mark = len(env.proxy.decisions())
    sock = open_tunnel(env.proxy.explicit, f"{REGISTRY}:{env.upstream.port}")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def one_byte_at_a_time(data: bytes) -> None:
        for i in range(len(data)):
            sock.send(data[i : i + 1])
            time.sleep(0.001)

    with sock:
        reply = _handshake_over(sock, tls_client(env), REGISTRY, one_byte_at_a_time)
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"ok"), reply
    [record] = decisions_since(env, mark)
    assert (record["decision"], record["sni"]) == ("allow", REGISTRY)


def test_sni_in_another_case_with_a_trailing_dot_is_the_same_name(env: Env) -> None:
    mark = len(env.proxy.decisions())
    sock = open_tunnel(env.proxy.explicit, f"{REGISTRY}:{env.upstream.port}")
    flight = hello_with_sni((0, REGISTRY.upper().encode() + b"."))
    with sock:
        sock.sendall(flight)
        # Not a handshake we can finish (the hello was edited), but it must be
        # relayed: the upstream answers with TLS records.
        answer = sock.recv(5)
    assert answer[:1] in (b"\x16", b"\x15"), answer
    [record] = decisions_since(env, mark)
    assert (record["decision"], record["reason"]) == ("allow", "rule_allow")
    still_serving(env)


def test_connect_host_in_capitals_with_a_trailing_dot_is_allowed(env: Env) -> None:
    mark = len(env.proxy.decisions())
    target = f"{REGISTRY.upper()}.:{env.upstream.port}"
    assert tls_get(env, REGISTRY, target).endswith(b"ok")
    [record] = decisions_since(env, mark)
    assert (record["host"], record["decision"]) == (REGISTRY, "allow")


# --- 4. who may ask ------------------------------------------------------------------


def test_client_outside_the_source_groups(env: Env) -> None:
    mark, before = len(env.proxy.decisions()), env.counts()
    answer = ask(env.proxy.explicit, f"{REGISTRY}:{env.upstream.port}",
                 source=OUTSIDE_CLIENT, to_close=True).data
    record = assert_refused(env, answer, mark, before, 403, "source_unknown")
    assert record["client"] == OUTSIDE_CLIENT


def admin_get(env: Env, path: str, source: str) -> bytes:
    with dial(env.proxy.admin, source=source) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n".encode())
        return read_to_close(sock)


def test_admin_endpoint_refuses_a_client_outside_admin_allow(env: Env) -> None:
    before = env.counts()
    def refusals() -> int:
        return sum(1 for r in env.proxy.records() if r.get("msg") == "admin client refused"
                   and r.get("client") == OTHER_ADMIN_CLIENT)

    for path in ("/metrics", f"/explain?from=127.0.0.1&to={REGISTRY}:443", "/healthz"):
        logged = refusals()
        answer = admin_get(env, path, OTHER_ADMIN_CLIENT)
        assert answer.startswith(b"HTTP/1.1 403 "), answer[:100]
        assert b"portcullis_" not in answer and REGISTRY.encode() not in answer
        # Refused at accept, before its request is read: one line per connection.
        deadline = time.monotonic() + 10
        while refusals() == logged:
            assert time.monotonic() < deadline, "no 'admin client refused' line"
            time.sleep(0.05)
    assert env.counts() == before
    assert admin_get(env, "/healthz", "127.0.0.1").startswith(b"HTTP/1.1 200 ")
    still_serving(env)


# --- 5. the log itself ------------------------------------------------------------------


def test_every_log_line_is_one_json_object_of_printable_ascii(env: Env) -> None:
    """Log injection: whatever the cases above sent, each line parses on its own."""
    lines = Path(env.proxy.log_path).read_bytes().split(b"\n")
    assert lines[-1] == b""
    for line in lines[:-1]:
        assert all(32 <= b < 127 for b in line), line
        json.loads(line)
    # And the proxy never logged a failure of its own for any of them.
    assert env.proxy.records("error") == []


# --- 6. drain in the middle of a decision ---------------------------------------------


def test_drain_while_a_tunnel_waits_for_its_hello_records_one_decision(
    tmp_path: Path,
) -> None:
    """SIGTERM cancels a handler that dialled and still waits for the ClientHello:
    the connection gets exactly one decision record (`draining`)."""
    with TlsUpstream(UPSTREAM_IP, trustme.CA(), [REGISTRY]) as upstream:
        policy = policy_for({REGISTRY: [UPSTREAM_IP]}, [REGISTRY])
        policy["rules"][0]["ports"] = [upstream.port]
        policy["tls_ports"] = [upstream.port]
        policy["limits"] = {"drain_timeout": 0.5, "client_hello_timeout": 30}
        with run_portcullis(tmp_path, policy) as proxy:
            sock, answer = proxy.connect(f"{REGISTRY}:{upstream.port}")
            with sock:
                assert answer.status == 200, answer
                proxy.proc.send_signal(signal.SIGTERM)
                assert proxy.proc.wait(timeout=10) == 0
            records = proxy.decisions(REGISTRY)
            assert [(r["decision"], r["reason"]) for r in records] == [("deny", "draining")]
            assert proxy.records("error") == []


@pytest.mark.parametrize("request_line", [
    "CONNECT silent.adv.test:{PORT} HTTP/1.1\r\nHost: silent.adv.test:{PORT}\r\n\r\n",
    "GET http://silent.adv.test:{PORT}/ HTTP/1.1\r\nHost: silent.adv.test:{PORT}\r\n\r\n",
])
def test_drain_while_dialling_records_one_decision(tmp_path: Path, request_line: str) -> None:
    """SIGTERM cancels a handler whose dial hangs (the upstream's accept queue is
    full): one `draining` record, for a tunnel and for plain HTTP alike."""
    with full_listener(UPSTREAM_IP) as port:
        policy = policy_for({"silent.adv.test": [UPSTREAM_IP]}, ["silent.adv.test"])
        policy["rules"][0]["ports"] = [port]
        policy["limits"] = {"drain_timeout": 0.5, "connect_timeout": 30}
        with run_portcullis(tmp_path, policy) as proxy:
            with socket.create_connection(proxy.explicit, timeout=10) as sock:
                sock.sendall(request_line.replace("{PORT}", str(port)).encode())
                time.sleep(0.3)  # decided, now dialling
                proxy.proc.send_signal(signal.SIGTERM)
                assert proxy.proc.wait(timeout=10) == 0
            records = proxy.decisions("silent.adv.test")
            assert [(r["decision"], r["reason"]) for r in records] == [("deny", "draining")]
            assert proxy.records("error") == []
