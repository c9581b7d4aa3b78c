"""What a Basic login costs per CONNECT (issue 15, part 3).

Starts `portcullis serve` twice on loopback, once with no identities and once
where only a login gets through, and times CONNECT -> `200` on fresh
connections (the upstream is a local TCP listener that accepts and holds). It
also times one hash check of each scheme: what every CONNECT would pay without
the cache of verified logins. Run under the e2e lock:

    flock /tmp/e2e.lock .venv/bin/python -m bench.logins --connects 300
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from portcullis.policy import passwords

USER, SECRET = "bench", "bench-secret"


def holding_listener() -> tuple[socket.socket, int]:
    """An upstream that accepts and keeps every connection until the end."""
    sock = socket.create_server(("127.0.0.2", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            held.append(conn)
            if len(held) > 200:
                held.pop(0).close()

    threading.Thread(target=accept, daemon=True).start()
    return sock, sock.getsockname()[1]


@contextmanager
def portcullis(work: Path, policy: dict[str, Any]) -> Iterator[tuple[str, int]]:
    work.mkdir(parents=True, exist_ok=True)
    (work / "policy.yaml").write_text(yaml.safe_dump(policy))
    log = work / "log.jsonl"
    log.write_text("")
    proc = subprocess.Popen([sys.executable, "-m", "portcullis.cli", "serve", "-c",
                             str(work / "policy.yaml"), "--log", str(log)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            lines = [json.loads(x) for x in log.read_text().splitlines() if x.endswith("}")]
            ready = [x for x in lines if x.get("msg") == "listening"]
            if ready:
                host, _, port = ready[0]["explicit"].rpartition(":")
                yield host, int(port)
                return
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("portcullis did not start")
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)


def connect_times(proxy: tuple[str, int], target: str, login: str | None, n: int
                  ) -> list[float]:
    extra = f"Proxy-Authorization: Basic {login}\r\n" if login else ""
    request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n".encode()
    out = []
    for _ in range(n):
        started = time.perf_counter()
        with socket.create_connection(proxy) as sock:
            sock.sendall(request)
            answer = sock.recv(4096)
            out.append(time.perf_counter() - started)
        if not answer.startswith(b"HTTP/1.1 200 "):
            raise SystemExit(f"CONNECT answered {answer!r}")
    return out


def hash_time(stored: str, runs: int) -> float:
    started = time.perf_counter()
    for _ in range(runs):
        assert passwords.verify(stored, SECRET)
    return (time.perf_counter() - started) / runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connects", type=int, default=300)
    args = parser.parse_args()
    upstream, port = holding_listener()
    target = f"bench.test:{port}"
    work = Path(tempfile.mkdtemp(prefix="portcullis-bench-logins-"))
    passwd = work / "passwd"
    stored = {"argon2": passwords.hash_password(SECRET, "argon2"),
              "bcrypt": passwords.hash_password(SECRET, "bcrypt", cost=12)}
    passwd.write_text(f"{USER}:{stored['bcrypt']}\n")
    base: dict[str, Any] = {
        "version": 1, "listen": {"explicit": "127.0.0.1:0", "admin": None},
        "limits": {"drain_timeout": 1},
        "resolver": {"hosts": {"bench.test": ["127.0.0.2"]}, "allow_ranges": ["127.0.0.2/32"]},
        "rules": [{"name": "bench", "from": ["clients"], "to": ["bench.test"],
                   "ports": [port], "raw": True}],
    }
    plain = {**base, "sources": {"clients": ["127.0.0.0/8"]}}
    logins = {**base, "auth": {"passwords": str(passwd)},
              "identities": {"clients": {"names": [USER]}}}
    token = base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
    rows = []
    with portcullis(work / "plain", plain) as proxy:
        connect_times(proxy, target, None, 20)  # warm up
        rows.append(("no identities (source address)", connect_times(proxy, target, None,
                                                                     args.connects)))
    with portcullis(work / "logins", logins) as proxy:
        first = connect_times(proxy, target, token, 1)
        rows.append(("Basic login, bcrypt cost 12, cached", connect_times(
            proxy, target, token, args.connects)))
    upstream.close()
    print("| CONNECT -> 200, fresh connection | median ms | p99 ms |")
    print("| --- | --- | --- |")
    for name, times in rows:
        ms = sorted(t * 1000 for t in times)
        print(f"| {name} | {statistics.median(ms):.2f} | {ms[int(len(ms) * 0.99) - 1]:.2f} |")
    print(f"| Basic login, bcrypt cost 12, first CONNECT (hashed) | {first[0] * 1000:.1f} | |")
    print()
    print("| one hash check (what each CONNECT would pay uncached) | ms |")
    print("| --- | --- |")
    print(f"| bcrypt cost 12 | {hash_time(stored['bcrypt'], 5) * 1000:.1f} |")
    print(f"| argon2id (argon2-cffi defaults: t=3, m=64 MiB, p=4) | "
          f"{hash_time(stored['argon2'], 5) * 1000:.1f} |")


if __name__ == "__main__":
    main()
