"""HAProxy (Debian's) in TCP mode as a load balancer in front of Portcullis,
sending the PROXY protocol header from its own source address."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.testbed.procs import ManagedProcess, clean_env, require_binary


@dataclass(frozen=True)
class Front:
    """One HAProxy `listen` section: `bind` -> Portcullis at `backend` with `option`."""

    bind: tuple[str, int]
    backend: int  # Portcullis's port on 127.0.0.1
    option: str  # send-proxy-v2 | send-proxy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@contextlib.contextmanager
def haproxy(fronts: dict[str, Front], source: str, workdir: Path) -> Iterator[None]:
    """Run HAProxy with one frontend per entry, connecting to Portcullis from `source`;
    ready when the first frontend accepts."""
    binary = require_binary("haproxy", "haproxy")
    sections = [
        f"listen {name}\n  bind {f.bind[0]}:{f.bind[1]}\n"
        f"  server portcullis 127.0.0.1:{f.backend} {f.option} source {source}\n"
        for name, f in fronts.items()]
    config = workdir / "haproxy.cfg"
    config.write_text(
        "global\n  maxconn 256\n"
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n"
        "  timeout server 60s\n" + "".join(sections))
    check = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = ManagedProcess("haproxy", [binary, "-db", "-f", str(config)],
                          workdir / "haproxy.log", clean_env())
    first = next(iter(fronts.values())).bind
    try:
        def probe() -> bool:
            with socket.create_connection(first, timeout=1):
                return True
        proc.wait_ready(probe, 15)
        yield
    finally:
        proc.stop()
