"""The text exports checked by the real tools (squid -k parse, nginx -t,
haproxy -c), then run: nginx and HAProxy configured from the export route real
TLS ClientHellos from clients in every source class, and every decision must be
Portcullis's own (tests/support/export_cases.py). Only loopback addresses are used."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from portcullis.tools.export import render, spec_from_file
from tests.support.dnsserver import DnsServer, Record
from tests.support.export_cases import CLIENTS, LISTED, PROBE_NAMES, RICH, expected, write
from tests.support.http import dial, read_to_close
from tests.support.servers import ThreadedServer
from tests.support.testbed.procs import ManagedProcess, clean_env, require_free
from tests.support.tls_hellos import real_hello

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]

NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
PROXY_IPS = {"nginx": "127.0.0.60", "haproxy": "127.0.0.62"}
UPSTREAM_IP = "127.0.0.61"
PORTS = (443, 8443)


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which(argv[0])
    assert binary, f"{argv[0]} is not installed (make sysdeps)"
    return subprocess.run([binary, *argv[1:]], capture_output=True, text=True, timeout=60)


def nginx_main(tmp: Path, stream_conf: Path) -> Path:
    main = tmp / "nginx.conf"
    main.write_text(
        f"load_module {NGINX_STREAM_MODULE};\n"
        f"pid {tmp / 'nginx.pid'};\n"
        f"error_log {tmp / 'nginx-error.log'} info;\n"
        "daemon off;\n"
        "events {}\n"
        f"include {stream_conf};\n"
    )
    return main


def exported(tmp: Path, fmt: str, text: str, options: dict[str, str] | None = None) -> Path:
    path, policy = write(tmp, text)
    out = tmp / f"export.{fmt}"
    out.write_text(render(fmt, spec_from_file(path, policy), options))
    return out


# --- validity -------------------------------------------------------------------------


@pytest.mark.parametrize("source", [RICH, LISTED])
def test_squid_parses_the_export_without_a_warning(tmp_path: Path, source: str) -> None:
    conf = exported(tmp_path, "squid", source)
    result = run(["squid", "-k", "parse", "-f", str(conf)])
    assert result.returncode == 0, result.stderr
    complaints = [line for line in result.stderr.splitlines()
                  if any(w in line for w in ("WARNING", "ERROR", "FATAL", "Bungled"))]
    assert complaints == []
    assert "Processing: http_access deny all" in result.stderr


def test_squid_parses_a_whole_catalog_export(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "portcullis.cli", "domains", "--all-regions", "--wildcards",
         "--format", "squid"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    conf = tmp_path / "catalog.conf"
    conf.write_text(result.stdout)
    parsed = run(["squid", "-k", "parse", "-f", str(conf)])
    assert parsed.returncode == 0, parsed.stderr
    assert "WARNING" not in parsed.stderr and "ERROR" not in parsed.stderr


@pytest.mark.parametrize("source", [RICH, LISTED])
def test_nginx_accepts_the_export(tmp_path: Path, source: str) -> None:
    conf = exported(tmp_path, "nginx", source, {"listen": PROXY_IPS["nginx"]})
    result = run(["nginx", "-t", "-c", str(nginx_main(tmp_path, conf))])
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    assert "[warn]" not in result.stderr and "[emerg]" not in result.stderr


@pytest.mark.parametrize("source", [RICH, LISTED])
def test_haproxy_accepts_the_export_without_a_warning(tmp_path: Path, source: str) -> None:
    conf = exported(tmp_path, "haproxy", source, {"listen": PROXY_IPS["haproxy"]})
    result = run(["haproxy", "-c", "-f", str(conf)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout
    assert "WARNING" not in result.stdout + result.stderr


def test_the_tools_reject_a_broken_export(tmp_path: Path) -> None:
    """The validity checks above can fail: the same tools refuse a damaged file."""
    for fmt, argv in (("squid", ["squid", "-k", "parse", "-f"]),
                      ("haproxy", ["haproxy", "-c", "-f"])):
        conf = exported(tmp_path, fmt, RICH)
        conf.write_text(conf.read_text().replace(" src ", " srcc ", 1))
        assert run([*argv, str(conf)]).returncode != 0
    conf = exported(tmp_path, "nginx", RICH)
    conf.write_text(conf.read_text().replace("hostnames;", "hostname;", 1))
    assert run(["nginx", "-t", "-c", str(nginx_main(tmp_path, conf))]).returncode != 0


# --- behaviour --------------------------------------------------------------------------


class Upstream(ThreadedServer):
    """A plain TCP server on UPSTREAM_IP:port that answers `UPSTREAM <port>` to
    whatever arrives (a forwarded ClientHello), so a client sees it was let through;
    `seen` notes (port, client address) of each."""

    def __init__(self, port: int, seen: list[tuple[int, str]]) -> None:
        require_free((UPSTREAM_IP, port), "export test upstream")
        self.seen = seen
        super().__init__(socket.create_server((UPSTREAM_IP, port)))

    def serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                conn.recv(4096)
                conn.sendall(f"UPSTREAM {self.port}\n".encode())
                self.seen.append((self.port, conn.getpeername()[0]))


@contextlib.contextmanager
def upstreams() -> Iterator[list[tuple[int, str]]]:
    """An `Upstream` on each of PORTS; yields what they have seen."""
    seen: list[tuple[int, str]] = []
    with contextlib.ExitStack() as stack:
        for port in PORTS:
            stack.enter_context(Upstream(port, seen))
        yield seen


def let_through(client: str, proxy: tuple[str, int], name: str) -> bool:
    """Send a real ClientHello for `name` from `client`; True when the upstream answered."""
    with dial(proxy, source=client) as sock:
        sock.sendall(real_hello(name))
        answer = read_to_close(sock)
    assert answer in (b"", b"UPSTREAM 443\n", b"UPSTREAM 8443\n"), answer
    return answer.startswith(b"UPSTREAM")


def wait_listening(proc: ManagedProcess, address: tuple[str, int]) -> None:
    def probe() -> bool:
        with socket.create_connection(address, timeout=1):
            return True

    proc.wait_ready(probe, 15)


def start_proxy(fmt: str, tmp: Path, dns: DnsServer) -> ManagedProcess:
    ip = PROXY_IPS[fmt]
    for port in PORTS:
        require_free((ip, port), f"exported {fmt}")
    conf = exported(tmp, fmt, RICH, {"listen": ip, "resolver": dns.server})
    if fmt == "nginx":
        argv = [shutil.which("nginx") or "nginx", "-c", str(nginx_main(tmp, conf))]
    else:
        argv = [shutil.which("haproxy") or "haproxy", "-db", "-f", str(conf)]
    proc = ManagedProcess(fmt, argv, tmp / f"{fmt}.log", clean_env())
    try:
        for port in PORTS:
            wait_listening(proc, (ip, port))
    except BaseException:
        proc.stop()
        raise
    return proc


@pytest.mark.parametrize("fmt", ["nginx", "haproxy"])
def test_the_exported_proxy_decides_every_probe_as_portcullis(tmp_path: Path, fmt: str) -> None:
    _, policy = write(tmp_path, RICH, "reference.yaml")
    records = {name: [Record("A", UPSTREAM_IP, ttl=60)] for name in PROBE_NAMES}
    with DnsServer(records) as dns, upstreams() as seen:
        proc = start_proxy(fmt, tmp_path, dns)
        try:
            mismatches = []
            outcomes = set()
            allowed_names = set()
            for label, client in CLIENTS.items():
                for port in PORTS:
                    for name in PROBE_NAMES:
                        want = expected(policy, client, name, port)
                        got = let_through(client, (PROXY_IPS[fmt], port), name)
                        outcomes.add(got)
                        if want:
                            allowed_names.add(name)
                        if got != want:
                            mismatches.append(f"{label} {client} -> {name}:{port}: "
                                              f"{'through' if got else 'refused'}")
        finally:
            proc.stop()
        assert mismatches == [], "\n".join(mismatches)
        assert outcomes == {True, False}
        assert {port for port, _ in seen} == set(PORTS)
        # A refused name is never even looked up.
        looked_up = {name for name, _, _ in dns.query_log}
        assert looked_up and looked_up <= allowed_names, looked_up - allowed_names
