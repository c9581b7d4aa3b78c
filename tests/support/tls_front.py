"""HAProxy terminating TLS in front of a TCP address: an `https://` proxy made
of Portcullis's explicit listener, for clients that speak TLS to their proxy.

It has its own CA, apart from the testbed's, so a test can tell the CA that
signs the proxy (`check --proxy-ca`) from the one that signs the registry
(`--ca`).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trustme

from tests.support.testbed.procs import ManagedProcess, clean_env, require_binary, require_free


@dataclass(frozen=True)
class TlsFront:
    url: str  # https://IP:PORT
    ca_pem: Path  # the CA that signs the front's certificate (an iPAddress SAN)
    log: Path


def _free_port(ip: str) -> int:
    with socket.socket() as sock:
        sock.bind((ip, 0))
        port: int = sock.getsockname()[1]
        return port


def _config(address: tuple[str, int], pem: Path, backend: tuple[str, int]) -> str:
    return f"""\
global
    maxconn 256
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend tls_front
    bind {address[0]}:{address[1]} ssl crt {pem}
    default_backend proxy
backend proxy
    server proxy {backend[0]}:{backend[1]}
"""


@contextlib.contextmanager
def tls_front(workdir: Path, backend: tuple[str, int], ip: str) -> Iterator[TlsFront]:
    """HAProxy on `ip` (a free port) decrypting TLS and passing the bytes to `backend`."""
    haproxy = require_binary("haproxy", "haproxy")
    workdir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="Portcullis test proxy front")
    pem = workdir / "front.pem"  # HAProxy wants the key and the chain in one file
    ca.issue_cert(ip).private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca_pem = workdir / "front-ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    address = (ip, _free_port(ip))
    require_free(address, "TLS front")
    conf = workdir / "haproxy.cfg"
    conf.write_text(_config(address, pem, backend))
    log = workdir / "haproxy.log"
    proc = ManagedProcess("haproxy TLS front", [haproxy, "-db", "-f", str(conf)], log,
                          clean_env())
    try:
        def listening() -> bool:
            with socket.create_connection(address, timeout=1):
                return True

        proc.wait_ready(listening, 15)
        yield TlsFront(f"https://{ip}:{address[1]}", ca_pem, log)
    finally:
        proc.stop()
