"""Connection rate and set-up latency: CONNECT + a real TLS handshake (Python's ssl,
so a real ClientHello with SNI) + GET of a 1 KiB file, one request per connection,
50 clients at once for a fixed time.

The load is `PROCESSES` processes of blocking client threads: OpenSSL releases
the GIL during the handshake, so the threads' crypto runs on both cores and the
Python left per connection is small. Each process reports its own CPU seconds
(getrusage) so the table shows what the load generator itself used.

Latency is per connection, from connect() to the last byte of the answer.
Run alone: python -m bench.connrate --worker '<json>' (what measure() does).
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from bench.servers import ORIGIN_NAME, SMALL_PATH, SMALL_SIZE, TLS_PORT, Server, dial_address

CLIENTS = 50
PROCESSES = 2
# Per slice; bench/run.py interleaves several slices per target so that drift
# on the shared machine hits every target alike.
DURATION = 5.0
WARMUP = 1.0
def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {ORIGIN_NAME}\r\nConnection: close\r\n\r\n".encode()

_CONNECT = f"CONNECT {ORIGIN_NAME}:{TLS_PORT} HTTP/1.1\r\nHost: {ORIGIN_NAME}:{TLS_PORT}\r\n\r\n"


def _one(ctx: ssl.SSLContext, address: tuple[str, int], connect: bool, buf: bytearray,
         request: bytes) -> None:
    sock = socket.create_connection(address, timeout=10)
    try:
        # Without it Nagle holds the request behind the client Finished for a delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if connect:
            sock.sendall(_CONNECT.encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("proxy closed before answering CONNECT")
                head += chunk
            if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        with ctx.wrap_socket(sock, server_hostname=ORIGIN_NAME) as tls:
            tls.sendall(request)
            got = 0
            while n := tls.recv_into(buf):
                got += n
            if got < SMALL_SIZE:
                raise ConnectionError(f"short answer: {got} bytes")
    finally:
        sock.close()


def worker(ca: str, address: tuple[str, int], connect: bool, clients: int, start_at: float,
           duration: float, path: str = SMALL_PATH) -> dict[str, object]:
    """Run `clients` threads from start_at (time.time()) for `duration`; report as JSON."""
    ctx = ssl.create_default_context(cafile=ca)
    request = _request(path)
    latencies: list[float] = []
    errors: list[str] = []
    done: list[None] = []  # every connection completed, warm-up included
    count_from, stop_at = start_at + WARMUP, start_at + duration

    def client() -> None:
        buf = bytearray(65536)
        while (now := time.time()) < stop_at:
            t0 = time.perf_counter()
            try:
                _one(ctx, address, connect, buf, request)
            except (OSError, ssl.SSLError) as exc:
                if now >= count_from:
                    errors.append(repr(exc))
                continue
            done.append(None)
            if now >= count_from and time.time() <= stop_at:
                latencies.append(time.perf_counter() - t0)  # list.append is atomic

    time.sleep(max(0.0, start_at - time.time()))
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration + 30)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"latencies": latencies, "errors": errors[:20], "n_errors": len(errors), "cpu_s": cpu,
            "total": len(done)}


@dataclass
class RateResult:
    rate: float  # completed connections per second
    p50_ms: float
    p99_ms: float
    errors: int
    loadgen_cores: float  # load generator CPU seconds per second of wall time
    proxy_cores: float | None
    first_errors: list[str]
    latencies: list[float]  # seconds, sorted
    measured_s: float

    @property
    def cpu_us_per_conn(self) -> float | None:
        if self.proxy_cores is None or not self.rate:
            return None
        return 1e6 * self.proxy_cores / self.rate


def combine(parts: list[RateResult]) -> RateResult:
    """One result from several slices of the same target (interleaved rounds)."""
    latencies = sorted(x for p in parts for x in p.latencies)
    measured = sum(p.measured_s for p in parts)
    proxy = [p.proxy_cores for p in parts if p.proxy_cores is not None]
    return RateResult(
        rate=len(latencies) / measured,
        p50_ms=_percentile(latencies, 0.50) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
        errors=sum(p.errors for p in parts),
        loadgen_cores=sum(p.loadgen_cores for p in parts) / len(parts),
        proxy_cores=sum(proxy) / len(proxy) if proxy else None,
        first_errors=[e for p in parts for e in p.first_errors][:5],
        latencies=latencies,
        measured_s=measured,
    )


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def measure(ca: str, proxy: Server | None, duration: float = DURATION,
            path: str = SMALL_PATH) -> RateResult:
    from bench import procfs

    start_at = time.time() + 0.5
    per = CLIENTS // PROCESSES
    address, connect = dial_address(proxy)
    spec = {"ca": ca, "address": list(address), "connect": connect, "clients": per,
            "start_at": start_at, "duration": duration, "path": path}
    procs = [subprocess.Popen([sys.executable, "-m", "bench.connrate", "--worker",
                               json.dumps(spec)], stdout=subprocess.PIPE)
             for _ in range(PROCESSES)]
    pids = procfs.tree(proxy.pid) if proxy else []
    time.sleep(max(0.0, start_at + WARMUP - time.time()))
    cpu0 = procfs.cpu_seconds(pids)
    t0 = time.time()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=duration + 60)
        results.append(json.loads(out))
    proxy_cpu = procfs.cpu_seconds(pids) - cpu0
    measured = duration - WARMUP
    proxy_wall = min(time.time(), start_at + duration) - t0
    latencies = sorted(x for r in results for x in r["latencies"])
    return RateResult(
        rate=len(latencies) / measured,
        p50_ms=_percentile(latencies, 0.50) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
        errors=sum(r["n_errors"] for r in results),
        loadgen_cores=sum(r["cpu_s"] for r in results) / duration,
        proxy_cores=proxy_cpu / proxy_wall if proxy else None,
        first_errors=[e for r in results for e in r["errors"]][:5],
        latencies=latencies,
        measured_s=measured,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", required=True)
    spec = json.loads(parser.parse_args().worker)
    result = worker(spec["ca"], tuple(spec["address"]), spec["connect"], spec["clients"],
                    spec["start_at"], spec["duration"], spec.get("path", SMALL_PATH))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
