"""Soak: mixed load on one Portcullis for a long time; RSS and fds over time.

    python -m bench.soak                 # 10 minutes
    python -m bench.soak --minutes 2     # a shorter run, for a quick look

Not part of `make test`. Everything runs on loopback (127.0.82.0/24): a TLS
origin and a plain-HTTP origin (threads in this process), Portcullis as a real
process, and asyncio clients in this process that keep up, at the same time:

- tunnel churn: CONNECT, TLS handshake, GET 1 KiB, close;
- bulk: CONNECT, TLS, GET 1 MiB (the relay's splice path);
- plain HTTP: absolute-form GETs, five per kept-alive connection;
- refusals: a name no rule allows (403), a name resolving to loopback (403),
  a malformed head (400);
- 200 idle tunnels, a tenth of them replaced every sample;
- slow clients that never finish their head (closed at the header timeout);
- a policy reload (SIGHUP) every 30 s.

Timeline: a warm-up (a tenth of the run, at least 30 s), a pause in which the
load stops and the fd count settles (the baseline), the rest of the run, and a
final pause (the end). It prints one line per sample and a verdict: RSS under
load may grow less than 10% after the warm-up, and the fd count at the end must
be back at the baseline. Results also go to bench/out/soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme

from bench.procfs import open_fds, rss_bytes, tree
from bench.servers import PortcullisServer, launch_portcullis

TLS_IP = "127.0.82.2"
PLAIN_IP = "127.0.82.3"
TLS_NAME = "origin.soak.test"
PLAIN_NAME = "plain.soak.test"
BIG = 1 << 20
SMALL = 1024
IDLE_TUNNELS = 200


# --- origins -----------------------------------------------------------------------


class Origin:
    """GET /small (1 KiB) or /big (1 MiB), over TLS or not, one request per
    connection unless the client keeps it alive (plain only)."""

    def __init__(self, host: str, context: ssl.SSLContext | None) -> None:
        self.context = context
        self.listener = socket.create_server((host, 0), backlog=1024)
        self.port: int = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        with contextlib.suppress(OSError), raw:
            raw.settimeout(900)  # idle tunnels stay up for a whole run
            conn = self.context.wrap_socket(raw, server_side=True) if self.context else raw
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                size = BIG if b" /big " in head.split(b"\r\n")[0] else SMALL
                close = b"connection: close" in head.lower()
                extra = "Connection: close\r\n" if close else ""
                conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n{extra}\r\n"
                             .encode() + b"x" * size)
                if close:
                    return

    def close(self) -> None:
        self.listener.close()


# --- load --------------------------------------------------------------------------


@dataclass
class Load:
    proxy: tuple[str, int]
    tls_port: int
    plain_port: int
    client_tls: ssl.SSLContext
    done: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    last_error: dict[str, str] = field(default_factory=dict)
    running: bool = True
    idle: list[asyncio.StreamWriter] = field(default_factory=list)

    async def _connect(self, target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter,
                                                   bytes]:
        reader, writer = await asyncio.open_connection(*self.proxy)
        writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        return reader, writer, head

    async def _tls_get(self, path: str, size: int) -> None:
        reader, writer, head = await self._connect(f"{TLS_NAME}:{self.tls_port}")
        try:
            if not head.startswith(b"HTTP/1.1 200 "):
                raise RuntimeError(f"CONNECT answered {head[:40]!r}")
            await writer.start_tls(self.client_tls, server_hostname=TLS_NAME)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {TLS_NAME}\r\n"
                         "Connection: close\r\n\r\n".encode())
            answer = await reader.readuntil(b"\r\n\r\n")
            body = await reader.readexactly(size)
            if not answer.startswith(b"HTTP/1.1 200 ") or len(body) != size:
                raise RuntimeError("short answer")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _plain_keepalive(self) -> None:
        reader, writer = await asyncio.open_connection(*self.proxy)
        host = f"{PLAIN_NAME}:{self.plain_port}"
        try:
            for _ in range(5):
                writer.write(f"GET http://{host}/small HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                answer = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(SMALL)
                if not answer.startswith(b"HTTP/1.1 200 "):
                    raise RuntimeError(f"answered {answer[:40]!r}")
        finally:
            writer.close()

    async def _refused(self, raw: bytes, status: bytes) -> None:
        reader, writer = await asyncio.open_connection(*self.proxy)
        try:
            writer.write(raw)
            answer = await reader.read()
            if not answer.startswith(b"HTTP/1.1 " + status):
                raise RuntimeError(f"answered {answer[:40]!r}, wanted {status!r}")
        finally:
            writer.close()

    async def _worker(self, kind: str, pause: float) -> None:
        while self.running:
            try:
                if kind == "tunnel":
                    await self._tls_get("/small", SMALL)
                elif kind == "bulk":
                    await self._tls_get("/big", BIG)
                elif kind == "plain":
                    await self._plain_keepalive()
                elif kind == "denied":
                    await self._refused(b"CONNECT evil.soak.test:443 HTTP/1.1\r\n\r\n", b"403")
                    await self._refused(b"CONNECT loop.soak.test:443 HTTP/1.1\r\n\r\n", b"403")
                    await self._refused(b"GET http://x/ HTTP/1.1\nHost: x\n\n", b"400")
                self.done[kind] += 1
            except Exception as exc:
                self.errors[kind] += 1
                self.last_error[kind] = repr(exc)
            await asyncio.sleep(pause)

    async def _open_idle(self) -> None:
        try:
            _, writer, head = await self._connect(f"{TLS_NAME}:{self.tls_port}")
        except OSError as exc:
            self.errors["idle"] += 1
            self.last_error["idle"] = repr(exc)
            return
        try:
            if not head.startswith(b"HTTP/1.1 200 "):
                raise RuntimeError(f"CONNECT answered {head[:40]!r}")
            # A tunnel that carries a finished handshake and then nothing.
            await writer.start_tls(self.client_tls, server_hostname=TLS_NAME)
        except Exception as exc:
            self.errors["idle"] += 1
            self.last_error["idle"] = repr(exc)
            writer.close()
            return
        self.idle.append(writer)
        self.done["idle"] += 1

    async def _slow(self, head_timeout: float) -> None:
        reader, writer = await asyncio.open_connection(*self.proxy)
        writer.write(b"GET http://plain.soak.test/ HTTP/1.1\r\nX-Slow: ")
        try:
            answer = await asyncio.wait_for(reader.read(), head_timeout + 10)
            if answer.startswith(b"HTTP/1.1 408 "):
                self.done["slow"] += 1
            else:
                raise RuntimeError(f"answered {answer[:40]!r}")
        except Exception as exc:
            self.errors["slow"] += 1
            self.last_error["slow"] = repr(exc)
        finally:
            writer.close()

    async def churn(self, interval: float, head_timeout: float) -> None:
        slow: set[asyncio.Task[None]] = set()
        while self.running:
            for writer in self.idle[: IDLE_TUNNELS // 10]:
                writer.close()
            del self.idle[: IDLE_TUNNELS // 10]
            await asyncio.gather(*(self._open_idle()
                                   for _ in range(IDLE_TUNNELS - len(self.idle))))
            for _ in range(20):
                task = asyncio.create_task(self._slow(head_timeout))
                slow.add(task)
                task.add_done_callback(slow.discard)
            await asyncio.sleep(interval)
        await asyncio.gather(*slow, return_exceptions=True)

    async def run(self, head_timeout: float, interval: float) -> None:
        self.running = True
        mix = ([("tunnel", 0.05)] * 8 + [("bulk", 0.2)] * 2 + [("plain", 0.05)] * 4
               + [("denied", 0.1)] * 2)
        tasks = [asyncio.create_task(self._worker(kind, pause)) for kind, pause in mix]
        tasks.append(asyncio.create_task(self.churn(interval, head_timeout)))
        await asyncio.gather(*tasks)
        for writer in self.idle:
            writer.close()
        self.idle.clear()


# --- measuring ---------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    phase: str
    rss_mib: float
    fds: int
    done: dict[str, int]
    errors: dict[str, int]


def measure(pid: int) -> tuple[float, int]:
    pids = tree(pid)
    return rss_bytes(pids) / (1 << 20), open_fds(pids)


def settle(pid: int, seconds: float = 3.0, limit: float = 60.0) -> tuple[float, int]:
    """Wait until the fd count has not moved for `seconds`; then measure."""
    started = time.monotonic()
    last, since = measure(pid)[1], time.monotonic()
    while time.monotonic() - since < seconds and time.monotonic() - started < limit:
        time.sleep(0.2)
        now = measure(pid)[1]
        if now != last:
            last, since = now, time.monotonic()
    return measure(pid)


def soak(minutes: float, sample: float, out: Path) -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    total = minutes * 60
    warmup = max(30.0, total / 10)
    head_timeout = 5.0
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(TLS_NAME).configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    tls_origin, plain_origin = Origin(TLS_IP, server_tls), Origin(PLAIN_IP, None)
    hosts = {TLS_NAME: [TLS_IP], PLAIN_NAME: [PLAIN_IP], "loop.soak.test": ["127.0.0.1"]}

    def policy(generation: int) -> dict[str, Any]:
        # loop.soak.test is allowed by name but resolves outside allow_ranges: 403.
        names = [TLS_NAME, PLAIN_NAME, "loop.soak.test", f"gen{generation}.soak.test"]
        return {
            "version": 1,
            "mode": "enforce",
            "listen": {"explicit": "127.0.82.1:0", "admin": "127.0.82.1:0"},
            "sources": {"workers": ["127.0.0.0/8"]},
            "rules": [{"name": "soak", "from": ["workers"], "to": names,
                       "ports": [tls_origin.port, plain_origin.port, 443]}],
            "tls_ports": [443, tls_origin.port],
            "resolver": {"hosts": hosts, "allow_ranges": [f"{TLS_IP}/32", f"{PLAIN_IP}/32"],
                         "timeout": 2},
            "limits": {"header_timeout": head_timeout, "drain_timeout": 10,
                       "max_connections": 20000},
        }

    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="portcullis-soak-") as workdir, \
            launch_portcullis(Path(workdir), policy(0)) as proxy:
        pid = proxy.pid
        load = Load(proxy.address, tls_origin.port, plain_origin.port, client_tls)
        started = time.monotonic()

        def record(phase: str, rss: float, fds: int) -> None:
            s = Sample(round(time.monotonic() - started, 1), phase, round(rss, 1), fds,
                       dict(load.done), dict(load.errors))
            samples.append(s)
            print(f"{s.t:7.1f}s {phase:8} rss {s.rss_mib:7.1f} MiB  fds {fds:5}  "
                  f"done {sum(s.done.values()):7}  errors {sum(s.errors.values())}", flush=True)

        def phase(name: str, seconds: float) -> None:
            thread = threading.Thread(
                target=lambda: asyncio.run(load.run(head_timeout, sample)), daemon=True)
            thread.start()
            end = time.monotonic() + seconds
            generation = len(samples)
            next_reload = time.monotonic() + 30
            while time.monotonic() < end:
                time.sleep(min(sample, max(0.0, end - time.monotonic())))
                if time.monotonic() >= next_reload:
                    generation += 1
                    proxy.write_policy(policy(generation))
                    proxy.proc.send_signal(signal.SIGHUP)
                    next_reload += 30
                record(name, *measure(pid))
            load.running = False
            thread.join(head_timeout + 30)

        record("start", *measure(pid))
        phase("warmup", warmup)
        base_rss, base_fds = settle(pid)
        record("baseline", base_rss, base_fds)
        phase("soak", total - warmup)
        end_rss, end_fds = settle(pid)
        record("end", end_rss, end_fds)
        errors_logged = proxy.records("error")
        reloads = sum(1 for r in proxy.records() if r.get("msg") == "policy reloaded")
        verdict = report(samples, proxy, load, errors_logged, reloads, out)
    tls_origin.close()
    plain_origin.close()
    return verdict


def report(samples: list[Sample], proxy: PortcullisServer, load: Load,
           errors_logged: list[dict[str, Any]], reloads: int, out: Path) -> int:
    warm = [s for s in samples if s.phase == "warmup"]
    loaded = [s for s in samples if s.phase == "soak"]
    base = next(s for s in samples if s.phase == "baseline")
    end = next(s for s in samples if s.phase == "end")
    after_warmup = warm[-1].rss_mib
    tail = loaded[-max(1, len(loaded) // 10):]
    growth_loaded = (max(s.rss_mib for s in tail) - after_warmup) / after_warmup * 100
    growth_quiet = (end.rss_mib - base.rss_mib) / base.rss_mib * 100
    ok = (growth_loaded < 10 and growth_quiet < 10 and end.fds <= base.fds
          and not load.errors and not errors_logged)
    summary = {
        "duration_s": end.t, "operations": dict(load.done), "errors": dict(load.errors),
        "last_errors": load.last_error, "errors_logged": errors_logged[:5],
        "reloads": reloads, "rss_after_warmup_mib": after_warmup,
        "rss_tail_max_mib": max(s.rss_mib for s in tail), "rss_growth_loaded_pct":
        round(growth_loaded, 2), "rss_baseline_quiet_mib": base.rss_mib,
        "rss_end_quiet_mib": end.rss_mib, "rss_growth_quiet_pct": round(growth_quiet, 2),
        "fds_baseline": base.fds, "fds_end": end.fds, "pass": ok,
        "samples": [s.__dict__ for s in samples],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=1))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "out" / "soak.json")
    args = parser.parse_args()
    os.chdir(Path(__file__).resolve().parents[1])
    return soak(args.minutes, args.sample, args.out)


if __name__ == "__main__":
    sys.exit(main())
