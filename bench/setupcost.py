"""The proxy's CPU per connection with a load that costs little itself: CONNECT,
a real ClientHello (made once by Python's ssl, SNI and all), 1 KiB back from an
origin that then closes, 50 connections at once.

The rate scenario (connrate.py) runs full TLS handshakes, whose crypto in the
client and in nginx takes most of the two shared cores, so the proxy's share
and its CPU per connection swing with the machine. Here the origin and the
clients are one uvloop process doing almost nothing, which leaves the proxy
the CPU and makes an A/B of two builds (bench/ab.py --light) repeatable.

    python -m bench.setupcost --worker '<json>'   (what measure() runs)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import ssl
import subprocess
import sys
import time

from bench.connrate import RateResult
from bench.servers import ORIGIN_ADDR, ORIGIN_NAME, TLS_PORT, Server

CLIENTS = 50
WARMUP = 1.0
ANSWER = b"a" * 1024
_CONNECT = (f"CONNECT {ORIGIN_NAME}:{TLS_PORT} HTTP/1.1\r\n"
            f"Host: {ORIGIN_NAME}:{TLS_PORT}\r\n\r\n").encode()


def client_hello() -> bytes:
    """The first flight of a real TLS client for ORIGIN_NAME."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=ORIGIN_NAME)
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the server's answer
        tls.do_handshake()
    return outgoing.read()


class Origin(asyncio.Protocol):
    """Answers the first bytes with 1 KiB and closes."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.answered = False

    def data_received(self, data: bytes) -> None:
        if not self.answered:
            self.answered = True
            self.transport.write(ANSWER)
            self.transport.write_eof()

    def eof_received(self) -> bool:
        self.transport.close()
        return True


async def _one(proxy: tuple[str, int], hello: bytes) -> None:
    reader, writer = await asyncio.open_connection(*proxy)
    try:
        writer.write(_CONNECT)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        writer.write(hello)
        body = await reader.read()
        if len(body) != len(ANSWER):
            raise ConnectionError(f"short answer: {len(body)} bytes")
        writer.write_eof()
    finally:
        writer.close()


async def _load(proxy: tuple[str, int], start_at: float, duration: float) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Origin, ORIGIN_ADDR, TLS_PORT, backlog=4096)
    hello = client_hello()
    done, total, errors = 0, 0, []
    count_from, stop_at = start_at + WARMUP, start_at + duration
    await asyncio.sleep(max(0.0, start_at - time.time()))

    async def client() -> None:
        nonlocal done, total
        while (now := time.time()) < stop_at:
            try:
                await _one(proxy, hello)
            except (OSError, asyncio.IncompleteReadError) as exc:
                errors.append(repr(exc))
                continue
            total += 1
            if now >= count_from:
                done += 1

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    server.close()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    return {"done": done, "total": total, "errors": errors[:5], "n_errors": len(errors),
            "cpu_s": cpu.ru_utime + cpu.ru_stime}


def measure(proxy: Server, duration: float = 5.0) -> RateResult:
    from bench import procfs

    start_at = time.time() + 0.5
    spec = {"address": list(proxy.address), "start_at": start_at, "duration": duration}
    load = subprocess.Popen([sys.executable, "-m", "bench.setupcost", "--worker", json.dumps(spec)],
                            stdout=subprocess.PIPE)
    pids = procfs.tree(proxy.pid)
    time.sleep(max(0.0, start_at + WARMUP - time.time()))
    cpu0 = procfs.cpu_seconds(pids)
    out, _ = load.communicate(timeout=duration + 60)
    proxy_cpu = procfs.cpu_seconds(pids) - cpu0
    result = json.loads(out)
    measured = duration - WARMUP
    return RateResult(rate=result["done"] / measured, p50_ms=0.0, p99_ms=0.0,
                      errors=result["n_errors"], loadgen_cores=result["cpu_s"] / duration,
                      proxy_cores=proxy_cpu / measured, first_errors=result["errors"],
                      latencies=[0.0] * result["done"], measured_s=measured)


def main() -> None:
    import uvloop

    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", required=True)
    spec = json.loads(parser.parse_args().worker)
    result = uvloop.run(_load(tuple(spec["address"]), spec["start_at"], spec["duration"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
