"""`explain` and the proxy agree: one table of cases run through a real
Portcullis (explicit CONNECT, plain HTTP, transparent TLS and transparent port
80) and through `portcullis explain` and admin `/explain`, in enforce and in
report mode; each case must give the same decision, reason and rule all three
ways (docs/decisions.md, "Report mode").

    worker .2 (a worker)     --veth--  firewall  --veth--  upstream .2 ok.test (443, 8443, 80, 8080)
           .3 (no group)               Portcullis          (.9 forbidden.test: never dialled)
                                       explicit :3128, transparent :3129, nftables redirect
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.netns import Namespaces, inside, namespaces
from tests.support.portcullis_proc import (
    PORTCULLIS,
    RunningPortcullis,
    apply_redirect,
    run_portcullis,
)
from tests.support.servers import EchoServer, ThreadedServer
from tests.support.tls_hellos import real_hello

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]

K = 60 + (os.getpid() % 60) * 2
WORKER_NET, UPSTREAM_NET = f"10.232.{K}", f"10.232.{K + 1}"
WORKER_IP, STRANGER_IP, FW_WORKER_IP = f"{WORKER_NET}.2", f"{WORKER_NET}.3", f"{WORKER_NET}.1"
FW_UPSTREAM_IP, UPSTREAM_IP = f"{UPSTREAM_NET}.1", f"{UPSTREAM_NET}.2"
FORBIDDEN_IP = f"{UPSTREAM_NET}.9"  # private and not in allow_ranges: never dialled
EXPLICIT_PORT, TRANSPARENT_PORT = 3128, 3129


def agreement_policy(mode: str) -> dict[str, Any]:
    return {
        "version": 1,
        "mode": mode,
        "listen": {"explicit": f"{FW_WORKER_IP}:{EXPLICIT_PORT}",
                   "transparent": f"0.0.0.0:{TRANSPARENT_PORT}", "admin": "127.0.0.1:0"},
        "sources": {"workers": [f"{WORKER_IP}/32"]},
        "rules": [
            {"name": "registry", "from": ["workers"], "to": ["ok.test", "forbidden.test",
                                                              "missing.test"], "ports": [443]},
            {"name": "pinned", "from": ["workers"], "to": ["pinned.test"], "ports": [443],
             "resolves_to": [f"{UPSTREAM_NET}.8/32"]},
            {"name": "plain", "from": ["workers"], "to": ["ok.test", "forbidden.test",
                                                           "missing.test"], "ports": [80]},
        ],
        "default": "deny",
        "tls_ports": [443, 8443],
        "resolver": {
            # Nothing answers DNS in the firewall namespace: missing.test fails at once.
            "servers": ["127.0.0.1:53"], "timeout": 1,
            "hosts": {"ok.test": [UPSTREAM_IP], "evil.test": [UPSTREAM_IP],
                      "pinned.test": [UPSTREAM_IP], "forbidden.test": [FORBIDDEN_IP]},
            "allow_ranges": [f"{UPSTREAM_IP}/32"],
        },
        "limits": {"header_timeout": 3, "client_hello_timeout": 2, "drain_timeout": 2},
    }


@dataclass(frozen=True)
class Case:
    listener: str  # explicit | http | transparent | transparent80
    host: str
    port: int
    client: str = WORKER_IP
    sni: str | None = None  # explicit: the SNI sent after 200 (default: host)

    @property
    def id(self) -> str:
        sni = f"-sni={self.sni}" if self.sni else ""
        who = "" if self.client == WORKER_IP else "-stranger"
        return f"{self.listener}-{self.host}:{self.port}{who}{sni}"


CASES = [
    # explicit CONNECT: allowed, no rule, wrong port, wrong source, forbidden address,
    # DNS failure, resolves_to miss, SNI mismatch
    Case("explicit", "ok.test", 443),
    Case("explicit", "evil.test", 443),
    Case("explicit", "ok.test", 8443),
    Case("explicit", "ok.test", 443, client=STRANGER_IP),
    Case("explicit", "forbidden.test", 443),
    Case("explicit", "missing.test", 443),
    Case("explicit", "pinned.test", 443),
    Case("explicit", "ok.test", 443, sni="evil.test"),
    # plain HTTP through the explicit listener
    Case("http", "ok.test", 80),
    Case("http", "evil.test", 80),
    Case("http", "ok.test", 8080),
    Case("http", "ok.test", 80, client=STRANGER_IP),
    Case("http", "forbidden.test", 80),
    Case("http", "missing.test", 80),
    # transparent TLS (the name is the SNI; the worker dials the upstream itself)
    Case("transparent", "ok.test", 443),
    Case("transparent", "evil.test", 443),
    Case("transparent", "ok.test", 8443),
    Case("transparent", "forbidden.test", 443),
    Case("transparent", "missing.test", 443),
    Case("transparent", "pinned.test", 443),
    # transparent port 80 (the name is the Host)
    Case("transparent80", "ok.test", 80),
    Case("transparent80", "evil.test", 80),
]


class _Sink(ThreadedServer):
    """Reads what each connection sends until the peer closes (the upstream's TLS ports)."""

    def serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(10)
            while conn.recv(65536):
                pass


@dataclass
class Net:
    ns: Namespaces
    proxy: RunningPortcullis
    policy_path: Path

    def use(self, mode: str) -> None:
        self.proxy.use_policy(agreement_policy(mode))


def _topology(ns: Namespaces) -> None:
    ns.routed([WORKER_IP, STRANGER_IP], (FW_WORKER_IP, FW_UPSTREAM_IP), "upstream", [UPSTREAM_IP])


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    workdir = tmp_path_factory.mktemp("agreement")
    with contextlib.ExitStack() as stack:
        ns = stack.enter_context(namespaces("worker", "firewall", "upstream"))
        _topology(ns)
        with inside(ns.upstream):
            for port in (443, 8443):
                stack.enter_context(_Sink(socket.create_server((UPSTREAM_IP, port))))
            # Every port a case names answers: in report mode a refused port is dialled.
            for port in (80, 8080):
                stack.enter_context(EchoServer(UPSTREAM_IP, port))
        policy = agreement_policy("enforce")
        apply_redirect(ns, policy, workdir)
        with inside(ns.firewall):
            proxy = stack.enter_context(run_portcullis(workdir / "portcullis", policy))
        yield Net(ns, proxy, workdir / "portcullis" / "policy.yaml")


# --- the three ways of asking -------------------------------------------------------


def _from_worker(net: Net, client: str, address: tuple[str, int]) -> socket.socket:
    with inside(net.ns.worker):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.bind((client, 0))
        sock.connect(address)
    return sock


def _read_some(sock: socket.socket) -> bytes:
    with contextlib.suppress(OSError):
        return sock.recv(65536)
    return b""


def through_proxy(net: Net, case: Case) -> dict[str, Any]:
    """Make the connection for real; the proxy's decision record for it."""
    explicit = (FW_WORKER_IP, EXPLICIT_PORT)
    target = f"{case.host}:{case.port}"
    # Only this connection's record: an earlier case's connection, from another
    # address, may have had the same port.
    mark = len(net.proxy.records())
    if case.listener == "explicit":
        sock = _from_worker(net, case.client, explicit)
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        answer = _read_some(sock)
        if answer.startswith(b"HTTP/1.1 200"):
            sock.sendall(real_hello(case.sni or case.host))
    elif case.listener == "http":
        sock = _from_worker(net, case.client, explicit)
        sock.sendall(f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        _read_some(sock)
    elif case.listener == "transparent":
        sock = _from_worker(net, case.client, (UPSTREAM_IP, case.port))
        sock.sendall(real_hello(case.host))
    else:
        sock = _from_worker(net, case.client, (UPSTREAM_IP, case.port))
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {case.host}\r\n\r\n".encode())
        _read_some(sock)
    port = sock.getsockname()[1]
    try:
        return net.proxy.decision_since(mark, port)
    finally:
        sock.close()


def through_cli(net: Net, case: Case) -> dict[str, Any]:
    argv = [*PORTCULLIS, "explain", "-c", str(net.policy_path), "--from", case.client,
            "--to", f"{case.host}:{case.port}", "--json"]
    if case.sni:
        argv += ["--sni", case.sni]
    # In the firewall namespace: the same resolver the proxy has.
    done = subprocess.run(["ip", "netns", "exec", net.ns.firewall, *argv],
                          capture_output=True, text=True, timeout=60, check=False)
    result = dict(json.loads(done.stdout))
    # Exit 0 when the connection would go on (allow or report), 1 when denied.
    assert done.returncode == (1 if result["decision"] == "deny" else 0), done.stderr
    return result


def through_admin(net: Net, case: Case) -> dict[str, Any]:
    query = {"from": case.client, "to": f"{case.host}:{case.port}"}
    if case.sni:
        query["sni"] = case.sni
    url = f"http://{net.proxy.admin[0]}:{net.proxy.admin[1]}/explain?" + urllib.parse.urlencode(
        query)
    with inside(net.ns.firewall), urllib.request.urlopen(url, timeout=10) as answer:
        return dict(json.loads(answer.read()))


def _essence(record: dict[str, Any]) -> tuple[str, str, str | None]:
    return record["decision"], record["reason"], record["rule"]


@pytest.mark.parametrize("mode", ["enforce", "report"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_explain_and_the_proxy_agree(net: Net, mode: str, case: Case) -> None:
    net.use(mode)
    proxy = _essence(through_proxy(net, case))
    assert _essence(through_admin(net, case)) == proxy
    assert _essence(through_cli(net, case)) == proxy


def test_the_issue_case_is_a_deny_everywhere_in_report_mode(net: Net) -> None:
    # A name resolving to a refused address, in report mode: the proxy refuses
    # it, and explain must say so too (it used to answer REPORT).
    net.use("report")
    case = Case("explicit", "forbidden.test", 443)
    assert _essence(through_proxy(net, case)) == ("deny", "address_forbidden", "registry")
    assert _essence(through_cli(net, case)) == ("deny", "address_forbidden", "registry")
