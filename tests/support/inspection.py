"""What the inspection tests share: a CA made by `portcullis ca init`, a certs
directory a client trusts, an inspecting policy, a TLS client through a tunnel."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.http import open_tunnel, read_head
from tests.support.portcullis_proc import PORTCULLIS, policy_for
from tests.support.testbed import Testbed


@dataclass(frozen=True)
class InspectionCA:
    cert: Path
    key: Path
    trusted_dir: Path  # testbed CA and Portcullis CA: what a worker that trusts both has
    testbed_only_dir: Path  # a worker that never installed the Portcullis CA


def make_ca(workdir: Path, testbed: Testbed, names: tuple[str, ...] = ("us.icr.io",)
            ) -> InspectionCA:
    out = workdir / "ca"
    shutil.rmtree(out, ignore_errors=True)
    argv = [*PORTCULLIS, "ca", "init", "--out", str(out)]
    for name in names:
        argv += ["--name", name]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    trusted, plain = workdir / "certs-trusted", workdir / "certs-testbed"
    for directory in (trusted, plain):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        shutil.copy(testbed.ca_pem, directory / "testbed-ca.crt")
    shutil.copy(out / "ca.pem", trusted / "portcullis-ca.crt")
    return InspectionCA(out / "ca.pem", out / "ca-key.pem", trusted, plain)


def inspect_policy(testbed: Testbed, ca: InspectionCA, repositories: list[str], *,
                   access: str = "pull", upstream_ca: list[str] | None = None,
                   mode: str = "enforce", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """us.icr.io inspected (rule `registry-images`), dd0.icr.io allowed by name
    (rule `delivery`), the testbed CA trusted upstream."""
    policy = policy_for(testbed.hosts, [], mode=mode, extra=extra)
    policy["rules"] = [
        {"name": "registry-images", "from": ["workers"], "to": ["us.icr.io"], "ports": [443],
         "inspect": {"repositories": repositories, "access": access}},
        {"name": "delivery", "from": ["workers"], "to": ["dd0.icr.io"], "ports": [443]},
    ]
    policy["tls_inspection"] = {
        "ca_cert": str(ca.cert), "ca_key": str(ca.key),
        "upstream_ca": [str(testbed.ca_pem)] if upstream_ca is None else upstream_ca,
    }
    return policy


def client_context(*cas: Path, alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    for ca in cas:
        context.load_verify_locations(cafile=str(ca))
    context.set_alpn_protocols(alpn or ["http/1.1"])
    return context


def inspected_tls(proxy: tuple[str, int], context: ssl.SSLContext, host: str = "us.icr.io"
                  ) -> ssl.SSLSocket:
    """A TLS connection to `host` through a CONNECT tunnel, handshake done."""
    sock = open_tunnel(proxy, f"{host}:443")
    return context.wrap_socket(sock, server_hostname=host)


def request(sock: socket.socket, method: str, path: str, host: str = "us.icr.io",
            extra: str = "") -> tuple[int, bytes, bytes]:
    """Send one request and read its answer (status, head, body by Content-Length)."""
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
    head, rest = read_head(sock)
    assert head, "the proxy closed without an answer"
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if method == "HEAD":
        length = 0
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, head, rest[:length]
