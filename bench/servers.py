"""The servers of one bench run, all on loopback: nginx (the origin, TLS and plain),
Squid, tinyproxy, Portcullis and the Python floor (bench/floor_relay.py), each
configured to CONNECT to the same origin name, and the C floor, HAProxy, which
forwards its own port to the origin's TLS port without CONNECT.

Everything lives in one directory on tmpfs (/dev/shm): the 1 GiB sparse file,
certificates, configurations and every server's logs, so no disk is in the path.
Logging stays on for each proxy (decision log, access log, connect log): it is
part of what a proxy costs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import trustme
import yaml

ORIGIN_NAME = "bench.icr.io"
# Not 127.0.0.1: Portcullis refuses to dial its own listen address.
ORIGIN_ADDR = "127.0.0.2"
TLS_PORT = 8443
PLAIN_PORT = 8080
BULK_PATH = "/1g"
BULK_SIZE = 1 << 30
SMALL_PATH = "/1k"
SMALL_SIZE = 1024
# This machine's hard RLIMIT_NOFILE (root without CAP_SYS_RESOURCE cannot pass it).
NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(address: tuple[str, int], proc: subprocess.Popen[bytes], what: str,
              timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(address, timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {address} within {timeout} s")


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    address: tuple[str, int]
    cleanup: list[Path] = field(default_factory=list)
    # False for a plain TCP forwarder to the origin's TLS port (HAProxy): the
    # clients connect to it as they would to the origin, without CONNECT.
    connect: bool = True

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for path in self.cleanup:
            path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class PortcullisServer(Server):
    """Portcullis as a process, with its policy file and its JSON decision log."""

    policy_path: Path = Path()
    log_path: Path = Path()

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        records = [json.loads(line) for line in self.log_path.read_text().splitlines()]
        return [r for r in records if event is None or r.get("event") == event]

    def write_policy(self, policy: dict[str, Any]) -> None:
        """Replace the policy file atomically (the server reloads on SIGHUP or mtime)."""
        tmp = self.policy_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(policy))
        os.replace(tmp, self.policy_path)


@dataclass
class Workdir:
    root: Path
    ca_pem: Path

    @classmethod
    @contextlib.contextmanager
    def create(cls) -> Iterator[Workdir]:
        root = Path(tempfile.mkdtemp(prefix="portcullis-bench-", dir="/dev/shm"))
        # nginx workers (nobody), Squid (proxy) and tinyproxy (nobody) read and
        # write their files here after dropping root.
        root.chmod(0o755)
        try:
            ca = trustme.CA()
            cert = ca.issue_cert(ORIGIN_NAME)
            ca.cert_pem.write_to_path(str(root / "ca.pem"))
            cert.private_key_and_cert_chain_pem.write_to_path(str(root / "origin.pem"))
            www = root / "www"
            www.mkdir()
            # Sparse: 1 GiB of zeros that costs no memory and reads at page-cache speed.
            with (www / BULK_PATH.lstrip("/")).open("wb") as f:
                f.truncate(BULK_SIZE)
            (www / SMALL_PATH.lstrip("/")).write_bytes(b"x" * SMALL_SIZE)
            for path in (www, *www.iterdir(), root / "origin.pem"):
                path.chmod(0o755 if path.is_dir() else 0o644)
            (root / "hosts").write_text(f"{ORIGIN_ADDR} {ORIGIN_NAME}\n127.0.0.1 localhost\n")
            (root / "resolv.conf").write_text("nameserver 127.0.0.1\n")
            yield cls(root, root / "ca.pem")
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def sub(self, name: str, owner: str | None = None) -> Path:
        path = self.root / name
        path.mkdir(exist_ok=True)
        if owner is not None:
            user = pwd.getpwnam(owner)
            os.chown(path, user.pw_uid, user.pw_gid)
        return path


def popen(cmd: list[str], log: Path, env: dict[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    """Start `cmd` with its output in `log`; `env` adds to (or overrides) this
    process's environment for it alone."""
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                preexec_fn=raise_nofile, start_new_session=True,
                                env=None if env is None else {**os.environ, **env})


def tree_env(tree: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that makes a child import `portcullis` from the source
    tree `tree` (shadowing the venv's editable install), plus `env`."""
    return {"PYTHONPATH": str(Path(tree).resolve()), **(env or {})}


def start_nginx(work: Workdir) -> Server:
    d = work.sub("nginx")
    for temp in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (d / temp).mkdir(exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(f"""\
worker_processes 2;
worker_rlimit_nofile {NOFILE};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
daemon off;
events {{ worker_connections {NOFILE - 100}; multi_accept on; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 600s;
    client_header_timeout 600s;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type application/octet-stream;
    server {{
        listen {ORIGIN_ADDR}:{TLS_PORT} ssl backlog=4096;
        ssl_certificate {work.root}/origin.pem;
        ssl_certificate_key {work.root}/origin.pem;
        ssl_protocols TLSv1.3;
        ssl_session_tickets off;
        root {work.root}/www;
    }}
    server {{
        listen {ORIGIN_ADDR}:{PLAIN_PORT} backlog=4096;
        root {work.root}/www;
    }}
}}
""")
    proc = popen(["nginx", "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")],
                  d / "stdout.log")
    wait_port((ORIGIN_ADDR, TLS_PORT), proc, "nginx")
    return Server("nginx", proc, (ORIGIN_ADDR, TLS_PORT))


def start_squid(work: Workdir, *, label: str = "squid", binary: str = "squid",
                port_options: str = "", extra: str = "") -> Server:
    """Squid tunnelling CONNECT; `port_options` and `extra` add to its http_port
    line and its configuration (bench/inspect_bench.py's ssl-bump)."""
    d = work.sub(label.replace(" ", "-"), owner="proxy")  # paths in squid.conf take no spaces
    port = free_port()
    # One service name per Squid: two in one run must not share shm segments.
    service = f"pcbench{os.getpid()}" + "".join(c for c in label if c.isalnum())
    conf = d / "squid.conf"
    conf.write_text(f"""\
http_port 127.0.0.1:{port} {port_options}
workers 1
max_filedescriptors {NOFILE}
visible_hostname portcullis-bench-squid
cache_effective_user proxy
pid_filename {d}/squid.pid
cache_log {d}/cache.log
access_log stdio:{d}/access.log
coredump_dir {d}
cache deny all
cache_mem 8 MB
hosts_file {work.root}/hosts
dns_nameservers 127.0.0.1
pinger_enable off
shutdown_lifetime 0 seconds
acl clients src 127.0.0.0/8
acl bench_ports port {TLS_PORT} {PLAIN_PORT}
acl CONNECT method CONNECT
http_access deny CONNECT !bench_ports
http_access allow clients
http_access deny all
{extra}""")
    proc = popen([binary, "-N", "-n", service, "-f", str(conf)], d / "stdout.log")
    wait_port(("127.0.0.1", port), proc, label)
    return Server(label, proc, ("127.0.0.1", port), list(Path("/dev/shm").glob(f"{service}-*")))


def start_tinyproxy(work: Workdir) -> Server:
    d = work.sub("tinyproxy", owner="nobody")
    port = free_port()
    conf = d / "tinyproxy.conf"
    conf.write_text(f"""\
User nobody
Group nogroup
Port {port}
Listen 127.0.0.1
Timeout 600
MaxClients {NOFILE}
LogFile "{d}/tinyproxy.log"
LogLevel Connect
PidFile "{d}/tinyproxy.pid"
Allow 127.0.0.1
ConnectPort {TLS_PORT}
ConnectPort {PLAIN_PORT}
DisableViaHeader Yes
""")
    # tinyproxy resolves with getaddrinfo: give it the bench hosts file (and a
    # loopback-only resolv.conf) in a private mount namespace, never the host's.
    script = (f"mount --bind {work.root}/hosts /etc/hosts && "
              f"mount --bind {work.root}/resolv.conf /etc/resolv.conf && "
              f"exec tinyproxy -d -c {conf}")
    proc = popen(["unshare", "-m", "sh", "-c", script], d / "stdout.log")
    wait_port(("127.0.0.1", port), proc, "tinyproxy")
    return Server("tinyproxy", proc, ("127.0.0.1", port))


def start_floor_relay(work: Workdir) -> Server:
    d = work.sub("floor")
    port = free_port()
    proc = popen([sys.executable, "-m", "bench.floor_relay", "--listen", f"127.0.0.1:{port}",
                   "--host", f"{ORIGIN_NAME}={ORIGIN_ADDR}"], d / "stderr.log")
    wait_port(("127.0.0.1", port), proc, "floor_relay")
    return Server("floor", proc, ("127.0.0.1", port))


def haproxy_installed() -> bool:
    return subprocess.run(["dpkg", "-s", "haproxy"], capture_output=True).returncode == 0


def start_haproxy(work: Workdir) -> Server:
    """HAProxy in TCP mode, one thread, splicing: its port goes straight to the
    origin's TLS port (HAProxy cannot answer CONNECT).

    Splicing is forced both ways: `option splice-auto`'s heuristic never chose it
    here (strace over 3 GiB: only recvfrom/sendto of 16 KiB). Its pipes are 1 MiB,
    as Portcullis's are (proxy/pipes.py)."""
    d = work.sub("haproxy")
    port = free_port()
    conf = d / "haproxy.cfg"
    conf.write_text(f"""\
global
    nbthread 1
    maxconn 4096
    tune.pipesize {1 << 20}
defaults
    mode tcp
    option splice-request
    option splice-response
    timeout connect 10s
    timeout client 600s
    timeout server 600s
listen floor
    bind 127.0.0.1:{port}
    server origin {ORIGIN_ADDR}:{TLS_PORT}
""")
    proc = popen(["haproxy", "-db", "-f", str(conf)], d / "stdout.log")
    wait_port(("127.0.0.1", port), proc, "haproxy")
    return Server("haproxy", proc, ("127.0.0.1", port), connect=False)


def dial_address(proxy: Server | None) -> tuple[tuple[str, int], bool]:
    """Where a client connects for the origin's TLS port, and whether it then
    asks CONNECT: the origin itself (direct), a forwarder's port, or a proxy."""
    if proxy is None:
        return (ORIGIN_ADDR, TLS_PORT), False
    return proxy.address, proxy.connect


def portcullis_policy(port: int) -> dict[str, object]:
    return {
        "version": 1,
        "listen": {"explicit": f"127.0.0.1:{port}", "admin": "127.0.0.1:0"},
        "sources": {"bench": ["127.0.0.0/8"]},
        # The idle tunnels carry plain HTTP to PLAIN_PORT: a tunnel that is not
        # TLS needs `raw: true` (docs/decisions.md, "Every tunnel is checked").
        "rules": [{"name": "bench", "from": ["bench"], "to": [ORIGIN_NAME], "ports": [TLS_PORT]},
                  {"name": "bench-raw", "from": ["bench"], "to": [ORIGIN_NAME],
                   "ports": [PLAIN_PORT], "raw": True}],
        "tls_ports": [443, TLS_PORT],
        "resolver": {"hosts": {ORIGIN_NAME: [ORIGIN_ADDR]},
                     "allow_ranges": [f"{ORIGIN_ADDR}/32"], "servers": ["127.0.0.1"]},
        "limits": {"max_connections": 30000, "idle_timeout": 900},
    }


def start_portcullis(work: Workdir, *, workers: int = 1, uvloop: bool = True,
                     label: str = "portcullis") -> PortcullisServer:
    return launch_portcullis(work.sub(label), portcullis_policy(free_port()), workers=workers,
                             uvloop=uvloop, label=label)


def start_protocol_sketch(work: Workdir, tree: str = "src",
                          python: list[str] | None = None) -> PortcullisServer:
    """bench/protocol_path.py: the connection path as protocols, a measured sketch,
    importing `portcullis` from `tree` (a compiled copy: bench/compiled.py).
    `python` runs it under a tool (bench/instructions.py's callgrind)."""
    return launch_portcullis(work.sub("sketch"), portcullis_policy(free_port()),
                             label="sketch", start_timeout=300.0, env=tree_env(tree),
                             python=[*(python or [sys.executable]), "-m", "bench.protocol_path"])


def add_sketch_option(parser: argparse.ArgumentParser) -> None:
    """`--sketch [DIR]`, for the tools that can measure start_protocol_sketch beside the rest."""
    parser.add_argument("--sketch", nargs="?", const="src", metavar="DIR",
                        help="also bench/protocol_path.py (the connection path as protocols),"
                             " importing portcullis from DIR (default src)")


def launch_portcullis(d: Path, policy: dict[str, Any], *, workers: int = 1,
                      uvloop: bool = True, label: str = "portcullis",
                      python: list[str] | None = None,
                      start_timeout: float = 30.0,
                      env: dict[str, str] | None = None) -> PortcullisServer:
    """`portcullis serve` on `policy` with its files in `d`; returns once every
    worker listens. The address is the one the log reports (the policy may say :0).
    `python` replaces `python -m portcullis.cli` (bench/ab.py's profiler); `env`
    adds to its environment (`tree_env`: another source tree)."""
    policy_path = d / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(policy))
    log = d / "decisions.jsonl"
    log.write_text("")
    cmd = [*(python or [sys.executable, "-m", "portcullis.cli"]), "serve", "-c", str(policy_path),
           "--log", str(log), "--workers", str(workers)]
    if not uvloop:
        cmd.append("--no-uvloop")
    proc = popen(cmd, d / "stderr.log", env)
    server = PortcullisServer(label, proc, ("", 0), policy_path=policy_path, log_path=log)
    deadline = time.monotonic() + start_timeout
    listening: list[dict[str, Any]] = []
    while len(listening) < workers:
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{label} did not start: {(d / 'stderr.log').read_text()[-2000:]}")
        time.sleep(0.05)
        listening = [r for r in server.records() if r.get("msg") == "listening"]
    host, _, port = listening[0]["explicit"].rpartition(":")
    host = host.strip("[]")  # "[::1]:3128" for IPv6
    server.address = (host, int(port))
    return server
