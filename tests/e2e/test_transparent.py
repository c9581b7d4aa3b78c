"""Transparent mode end to end (issue 4, item 3): a worker with no proxy settings,
a firewall namespace routing it with the `portcullis nftables` redirect, and the
real testbed in a registry namespace.

    worker 10.231.K.2 --veth-- 10.231.K.1  firewall  10.231.K+1.1 --veth-- registry
                               Portcullis, transparent :3129     .2 us.icr.io (docker-registry)
                                                                 .3 dd0.icr.io (nginx CDN)
                                                                 .4 an attacker's listener
                                                                 .5 plain.icr.io (HTTP :80)

Every address is inside namespaces this module creates and always deletes.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.http import drip_until_answered, read_to_close
from tests.support.netns import Namespaces, inside, namespaces
from tests.support.portcullis_proc import (
    RunningPortcullis,
    apply_redirect,
    policy_for,
    run_portcullis,
)
from tests.support.testbed import Testbed, start_testbed, verify_pulled
from tests.support.tls_hellos import real_hello, with_extensions

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]

# Per-run subnets: namespaces keep concurrent runs apart anyway, but the testbed
# serializes runs on the same addresses with a lock file.
K = 16 + (os.getpid() % 100) * 2
WORKER_NET, REGISTRY_NET = f"10.231.{K}", f"10.231.{K + 1}"
WORKER_IP, FW_WORKER_IP = f"{WORKER_NET}.2", f"{WORKER_NET}.1"
FW_REGISTRY_IP, REGISTRY_IP, CDN_IP = f"{REGISTRY_NET}.1", f"{REGISTRY_NET}.2", f"{REGISTRY_NET}.3"
ATTACKER_IP, PLAIN_IP = f"{REGISTRY_NET}.4", f"{REGISTRY_NET}.5"
TRANSPARENT_PORT = 3129
HELLO_TIMEOUT = 1.5
ALERT_ACCESS_DENIED = bytes.fromhex("15030300020231")


@dataclass
class Net:
    ns: Namespaces
    bed: Testbed
    proxy: RunningPortcullis
    attacker: socket.socket
    plain_paths: list[str]
    workdir: Path
    # worker_socket's port -> the count of records before it connected.
    opened_at: dict[int, int] = field(default_factory=dict)

    def use(self, **transparent: Any) -> None:
        """Install the module's policy (with these `transparent:` settings) and wait for it."""
        self.use_policy(base_policy(self.bed, transparent=transparent))

    def use_policy(self, policy: dict[str, Any]) -> None:
        self.proxy.use_policy(policy)

    def mark(self) -> int:
        return len(self.proxy.records())

    def decisions_since(self, mark: int) -> list[dict[str, Any]]:
        return [r for r in self.proxy.records()[mark:] if r.get("event") == "decision"]

    def decision_for(self, client_port: int, timeout: float = 10) -> dict[str, Any]:
        """The decision on the worker_socket that had this port, from the records
        made since it was opened: an earlier test's connection may have had the
        same port."""
        return self.proxy.decision_since(self.opened_at.get(client_port, 0), client_port,
                                         timeout)

    def decisions_on(self, client_port: int) -> list[dict[str, Any]]:
        """Every decision on the worker_socket that had this port (decision_for)."""
        return [r for r in self.decisions_since(self.opened_at.get(client_port, 0))
                if r.get("client_port") == client_port]

    def pull(self, ref: str, dest: Path) -> Any:
        return self.bed.pull(dest, proxy=None, ref=ref, netns=self.ns.worker)


def base_policy(bed: Testbed, *, to: tuple[str, ...] = ("us.icr.io", "dd0.icr.io"),
                transparent: dict[str, Any] | None = None) -> dict[str, Any]:
    hosts = {**bed.hosts, "plain.icr.io": [PLAIN_IP]}
    policy = policy_for(hosts, [], sources=(f"{WORKER_NET}.0/24",))
    policy["listen"]["transparent"] = f"0.0.0.0:{TRANSPARENT_PORT}"
    policy["rules"] = [
        {"name": "registry", "from": ["workers"], "to": list(to), "ports": [443]},
        {"name": "plain", "from": ["workers"], "to": ["plain.icr.io"], "ports": [80]},
    ]
    policy["limits"]["client_hello_timeout"] = HELLO_TIMEOUT
    policy["limits"]["header_timeout"] = 3
    policy["transparent"] = {"strict": False, "ech": "deny", **(transparent or {})}
    return policy


def _topology(ns: Namespaces) -> None:
    ns.routed([WORKER_IP], (FW_WORKER_IP, FW_REGISTRY_IP), "registry",
              [REGISTRY_IP, CDN_IP, ATTACKER_IP, PLAIN_IP])
    # The worker resolves like any node would, from its own /etc/hosts.
    ns.etc("worker", {
        "hosts": (f"127.0.0.1 localhost\n{REGISTRY_IP} us.icr.io\n{CDN_IP} dd0.icr.io\n"
                  f"{PLAIN_IP} plain.icr.io\n"),
        "resolv.conf": "nameserver 127.0.0.1\n",
    })


class _PlainHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(f"{self.headers.get('Host')} {self.path}")
        body = b"plain hello\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    workdir = tmp_path_factory.mktemp("transparent")
    with contextlib.ExitStack() as stack:
        ns = stack.enter_context(namespaces("worker", "firewall", "registry"))
        _topology(ns)
        with inside(ns.registry):
            bed = stack.enter_context(
                start_testbed(workdir / "testbed", registry_ip=REGISTRY_IP, cdn_ip=CDN_IP))
            attacker = stack.enter_context(socket.create_server((ATTACKER_IP, 443)))
            seen: list[str] = []
            handler = type("Handler", (_PlainHandler,), {"seen": seen})
            plain = http.server.ThreadingHTTPServer((PLAIN_IP, 80), handler)
        stack.callback(plain.server_close)
        threading.Thread(target=plain.serve_forever, daemon=True).start()
        stack.callback(plain.shutdown)
        policy = base_policy(bed)
        # The redirect comes from the command an operator would run on the gateway.
        apply_redirect(ns, policy, workdir)
        with inside(ns.firewall):
            proxy = stack.enter_context(run_portcullis(workdir / "portcullis", policy))
        yield Net(ns, bed, proxy, attacker, seen, workdir)


@contextlib.contextmanager
def worker_socket(net: Net, address: tuple[str, int], timeout: float = 10
                  ) -> Iterator[socket.socket]:
    mark = net.mark()
    with inside(net.ns.worker):
        sock = socket.create_connection(address, timeout=timeout)
    net.opened_at[sock.getsockname()[1]] = mark
    with sock:
        yield sock


def with_ech(flight: bytes) -> bytes:
    """`flight` with an encrypted_client_hello (0xfe0d) extension appended."""
    return with_extensions(flight, {}, [(0xFE0D, bytes(8))])

def tls_get(sock: socket.socket, bed: Testbed, name: str = "us.icr.io") -> bytes:
    """GET /v2/ over verified TLS as `name`; the first line of the answer."""
    tls = bed.ssl_context().wrap_socket(sock, server_hostname=name)
    tls.sendall(f"GET /v2/ HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
    return read_to_close(tls).split(b"\r\n", 1)[0]


def test_allowed_pull_succeeds_with_no_proxy_settings(net: Net, tmp_path: Path) -> None:
    net.use()
    mark = net.mark()
    result = net.pull(net.bed.image_ref, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    verify_pulled(tmp_path / "out", net.bed.image)
    decisions = net.decisions_since(mark)
    assert {r["host"] for r in decisions} == {"us.icr.io", "dd0.icr.io"}
    expected_ip = {"us.icr.io": REGISTRY_IP, "dd0.icr.io": CDN_IP}
    for r in decisions:
        assert (r["mode"], r["decision"], r["reason"]) == ("transparent", "allow", "rule_allow")
        assert r["client"] == WORKER_IP and r["sni"] == r["host"] and r["port"] == 443
        assert r["original_dst"] == r["dialed"] == f"{expected_ip[r['host']]}:443"
    closes = [r for r in net.proxy.records()[mark:] if r.get("event") == "close"]
    assert sum(c["bytes_down"] for c in closes) > net.bed.image.total_size


def test_delivery_host_not_allowed_fails_the_pull_with_no_rule(net: Net, tmp_path: Path) -> None:
    net.use_policy(base_policy(net.bed, to=("us.icr.io",)))
    mark = net.mark()
    result = net.pull(net.bed.small_image_ref, tmp_path / "out")
    assert result.returncode != 0
    assert "access denied" in result.stderr, result.stderr
    denied = [r for r in net.decisions_since(mark) if r["host"] == "dd0.icr.io"]
    assert denied and {(r["decision"], r["reason"]) for r in denied} == {("deny", "no_rule")}
    assert all(r["dialed"] is None and r["original_dst"] == f"{CDN_IP}:443" for r in denied)


def _attacker_got_nothing(net: Net) -> None:
    net.attacker.setblocking(False)
    with pytest.raises(BlockingIOError):
        net.attacker.accept()[0].close()


def test_spoofed_sni_goes_to_the_resolved_registry_not_the_attacker(net: Net) -> None:
    net.use()
    with worker_socket(net, (ATTACKER_IP, 443)) as sock:
        port = sock.getsockname()[1]
        # The certificate verifies: the worker reached the real us.icr.io.
        assert tls_get(sock, net.bed) == b"HTTP/1.1 200 OK"
    record = net.decision_for(port)
    assert (record["decision"], record["host"]) == ("allow", "us.icr.io")
    assert record["original_dst"] == f"{ATTACKER_IP}:443"
    assert record["dialed"] == f"{REGISTRY_IP}:443"
    _attacker_got_nothing(net)


def test_strict_mode_refuses_an_original_destination_dns_does_not_give(net: Net) -> None:
    net.use(strict=True)
    with worker_socket(net, (ATTACKER_IP, 443)) as sock:
        port = sock.getsockname()[1]
        with pytest.raises(ssl.SSLError, match="ACCESS_DENIED"):
            tls_get(sock, net.bed)
    record = net.decision_for(port)
    assert (record["decision"], record["reason"]) == ("deny", "original_dst_mismatch")
    assert record["original_dst"] == f"{ATTACKER_IP}:443" and record["dialed"] is None
    _attacker_got_nothing(net)
    # The registry's own address is among the resolved ones: strict lets it through.
    with worker_socket(net, (REGISTRY_IP, 443)) as sock:
        port = sock.getsockname()[1]
        assert tls_get(sock, net.bed) == b"HTTP/1.1 200 OK"
    assert net.decision_for(port)["dialed"] == f"{REGISTRY_IP}:443"


def _send_slowly(chunks: list[bytes], pause: float) -> Callable[[socket.socket], None]:
    def send(sock: socket.socket) -> None:
        for chunk in chunks:
            sock.sendall(chunk)
            time.sleep(pause)
    return send


REFUSALS = {
    "no_sni": (lambda s: s.sendall(real_hello(None)), ALERT_ACCESS_DENIED),
    "ech_present": (lambda s: s.sendall(with_ech(real_hello("us.icr.io"))),
                    ALERT_ACCESS_DENIED),
    "not_tls": (lambda s: s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: us.icr.io\r\n\r\n"), b""),
    # Part of a hello, then silence past client_hello_timeout.
    "header_timeout": (lambda s: s.sendall(real_hello("us.icr.io")[:20]), b""),
}


@pytest.mark.parametrize("reason", list(REFUSALS))
def test_unusable_hellos_are_refused_with_their_reason(net: Net, reason: str) -> None:
    net.use()
    send, answer = REFUSALS[reason]
    started = time.monotonic()
    with worker_socket(net, (REGISTRY_IP, 443)) as sock:
        port = sock.getsockname()[1]
        send(sock)
        assert read_to_close(sock) == answer
    took = time.monotonic() - started
    record = net.decision_for(port)
    assert (record["mode"], record["decision"], record["reason"]) == (
        "transparent", "deny", reason)
    assert record["original_dst"] == f"{REGISTRY_IP}:443"
    assert record["dialed"] is None and record["resolved"] == []
    if reason == "header_timeout":
        assert HELLO_TIMEOUT - 0.1 <= took < HELLO_TIMEOUT + 3
    if reason == "ech_present":
        assert record["sni"] == "us.icr.io" and record["rule"] == "registry"


def test_ech_allow_outer_decides_on_the_outer_name(net: Net) -> None:
    net.use(ech="allow_outer")
    with worker_socket(net, (REGISTRY_IP, 443)) as sock:
        port = sock.getsockname()[1]
        sock.sendall(with_ech(real_hello("us.icr.io")))
        record = net.decision_for(port)
    assert (record["decision"], record["host"]) == ("allow", "us.icr.io")
    assert record["dialed"] == f"{REGISTRY_IP}:443"


def test_connecting_to_the_listener_itself_is_refused(net: Net) -> None:
    net.use()
    with worker_socket(net, (FW_WORKER_IP, TRANSPARENT_PORT)) as sock:
        port = sock.getsockname()[1]
        sock.sendall(real_hello("us.icr.io"))
        assert read_to_close(sock) == b""
    record = net.decision_for(port)
    assert (record["decision"], record["reason"]) == ("deny", "address_forbidden")
    assert record["original_dst"] == f"{FW_WORKER_IP}:{TRANSPARENT_PORT}"
    assert record["dialed"] is None


LOOP_RULES = f"""table inet loop {{
    chain out {{
        type nat hook output priority -150; policy accept;
        tcp dport 443 redirect to :{TRANSPARENT_PORT}
    }}
}}
"""


def test_a_redirect_loop_is_cut_at_the_first_turn(net: Net) -> None:
    """A same-host set-up that forgot the exemption sends Portcullis's own upstream
    connection back to it: refused there, instead of dialling itself until out of fds."""
    net.use()
    mark = net.mark()
    net.ns.exec("firewall", ["nft", "-f", "-"], input=LOOP_RULES)
    try:
        with worker_socket(net, (REGISTRY_IP, 443)) as sock, pytest.raises(
            ssl.SSLError, match="ACCESS_DENIED"
        ):
            tls_get(sock, net.bed)
    finally:
        net.ns.exec("firewall", ["nft", "delete", "table", "inet", "loop"])
    time.sleep(0.2)
    decisions = net.decisions_since(mark)
    assert [(r["client"], r["decision"], r["reason"]) for r in decisions] == [
        (WORKER_IP, "allow", "rule_allow"),
        (FW_REGISTRY_IP, "deny", "address_forbidden"),
    ]
    # The looped connection is our own, still aimed at the registry.
    assert decisions[1]["original_dst"] == f"{REGISTRY_IP}:443"
    errors = [r for r in net.proxy.records()[mark:] if "redirect loop" in r.get("msg", "")]
    assert len(errors) == 1


def test_hello_split_over_records_and_segments_is_relayed_intact(net: Net) -> None:
    """Three handshake records in seven TCP segments: decided on the reassembled SNI,
    and forwarded byte for byte (any change breaks the handshake's transcript hash)."""
    net.use()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = net.bed.ssl_context().wrap_bio(incoming, outgoing, server_hostname="us.icr.io")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    flight = outgoing.read()
    message = flight[5:]
    third = len(message) // 3 + 1
    records = b"".join(struct.pack("!BHH", 0x16, 0x0301, len(part)) + part
                       for part in (message[i : i + third] for i in range(0, len(message), third)))
    segments = [records[i : i + len(records) // 6] for i in range(0, len(records),
                                                                 len(records) // 6)]
    with worker_socket(net, (REGISTRY_IP, 443)) as sock:
        port = sock.getsockname()[1]
        _send_slowly(segments, 0.05)(sock)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                data = sock.recv(65536)
                assert data, "the connection closed during the handshake"
                incoming.write(data)
        sock.sendall(outgoing.read())
        tls.write(b"GET /v2/ HTTP/1.1\r\nHost: us.icr.io\r\nConnection: close\r\n\r\n")
        sock.sendall(outgoing.read())
        answer = b""
        while not answer.endswith(b"\r\n\r\n") and b"\r\n\r\n" not in answer:
            try:
                answer += tls.read(65536)
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                assert data, answer
                incoming.write(data)
        assert answer.startswith(b"HTTP/1.1 200 OK")
    record = net.decision_for(port)
    assert (record["decision"], record["sni"]) == ("allow", "us.icr.io")


def read_plain_hello(sock: socket.socket) -> bytes:
    """The plain server's whole answer to one GET on a kept-alive connection."""
    answer = b""
    while not answer.endswith(b"plain hello\n"):
        chunk = sock.recv(65536)
        assert chunk, answer
        answer += chunk
    return answer


def test_plain_http_on_port_80_is_decided_on_each_host(net: Net) -> None:
    net.use()
    net.plain_paths.clear()
    with worker_socket(net, (PLAIN_IP, 80)) as sock:
        port = sock.getsockname()[1]
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: plain.icr.io\r\n\r\n")
        assert read_plain_hello(sock).startswith(b"HTTP/1.1 200 ")
        # Same connection, another name: decided again, and refused.
        sock.sendall(b"GET /steal HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n")
        second = read_to_close(sock)
    assert second.startswith(b"HTTP/1.1 403 ") and b"reason: no_rule" in second
    assert net.plain_paths == ["plain.icr.io /hello"]
    records = net.decisions_on(port)
    assert [(r["host"], r["port"], r["decision"], r["mode"]) for r in records] == [
        ("plain.icr.io", 80, "allow", "transparent"),
        ("elsewhere.example", 80, "deny", "transparent"),
    ]
    assert all(r["original_dst"] == f"{PLAIN_IP}:80" for r in records)


@pytest.mark.parametrize("pause", [0.4, 1.2])
@pytest.mark.parametrize("which", ["first", "second"])
def test_every_redirected_head_has_one_deadline(net: Net, which: str, pause: float) -> None:
    """One header_timeout (3 s here) for a whole head on port 80: the first one,
    its wait for the first byte included, and a later one on a kept-alive connection."""
    net.use()
    slow = b"GET /slow HTTP/1.1\r\nHost: plain.icr.io\r\nX-Drip: " + b"x" * 40
    with worker_socket(net, (PLAIN_IP, 80)) as sock:
        port = sock.getsockname()[1]
        if which == "second":
            sock.sendall(b"GET /hello HTTP/1.1\r\nHost: plain.icr.io\r\n\r\n")
            read_plain_hello(sock)
        # Until the proxy answers: it then closes its side (its socket lingers
        # a moment, proxy/lingering.py, so a dripping client does not see that).
        elapsed = drip_until_answered(sock, slow, pause, limit=12)
        answer = read_to_close(sock)
    assert elapsed < 3 + 2 * pause + 1, f"answered after {elapsed:.1f} s"
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
    records = net.decisions_on(port)
    assert records[-1]["reason"] == "header_timeout"


def test_quic_from_the_worker_is_dropped(net: Net) -> None:
    with inside(net.ns.registry):
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with inside(net.ns.worker):
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with server, client:
        server.bind((REGISTRY_IP, 443))
        server.settimeout(1)
        client.sendto(b"quic initial", (REGISTRY_IP, 443))
        with pytest.raises(TimeoutError):
            server.recv(100)


def test_the_allowed_pull_still_works_afterwards(net: Net, tmp_path: Path) -> None:
    net.use()
    result = net.pull(net.bed.small_image_ref, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    verify_pulled(tmp_path / "out", net.bed.small_image)
    assert net.proxy.proc.poll() is None
