"""Capacity: 10,000 concurrent idle CONNECT tunnels to the origin's plain port.

The tunnels go to a port outside tls_ports, so a tunnel is established and idle
as soon as the proxy answers 200: no ClientHello is due. The load generator (one
asyncio process, RLIMIT_NOFILE raised) opens them, proves a sample still carries
bytes (an HTTP request through each), then holds them all while the parent reads
the proxy's RSS and open fds from /proc, and closes them when told.

Run alone: python -m bench.idle --worker '<json>' (what measure() does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

from bench.servers import ORIGIN_NAME, PLAIN_PORT, SMALL_PATH, SMALL_SIZE, Server, raise_nofile

TUNNELS = 10_000
OPENING = 256  # connections being set up at once
SAMPLE = 100  # tunnels that carry a request after all are open
OPEN_TIMEOUT = 30.0
TOTAL_TIMEOUT = 150.0
_CONNECT = (f"CONNECT {ORIGIN_NAME}:{PLAIN_PORT} HTTP/1.1\r\n"
            f"Host: {ORIGIN_NAME}:{PLAIN_PORT}\r\n\r\n").encode()
_REQUEST = f"GET {SMALL_PATH} HTTP/1.1\r\nHost: {ORIGIN_NAME}\r\n\r\n".encode()

Tunnel = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _open(proxy: tuple[str, int], gate: asyncio.Semaphore) -> Tunnel:
    async with gate:
        async with asyncio.timeout(OPEN_TIMEOUT):
            reader, writer = await asyncio.open_connection(*proxy, limit=4096)
            writer.write(_CONNECT)
            head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            writer.close()
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        return reader, writer


async def _use(tunnel: Tunnel) -> None:
    reader, writer = tunnel
    async with asyncio.timeout(OPEN_TIMEOUT):
        writer.write(_REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        await reader.readexactly(SMALL_SIZE)


async def _run(proxy: tuple[str, int], count: int) -> None:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(OPENING)
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(_open(proxy, gate)) for _ in range(count)]
    _, late = await asyncio.wait(tasks, timeout=TOTAL_TIMEOUT)
    for task in late:
        task.cancel()
    await asyncio.wait(tasks)
    opened: list[Tunnel] = []
    failures: list[str] = []
    for task in tasks:
        if task.cancelled():
            failures.append("not open within the total timeout")
        elif (exc := task.exception()) is not None:
            failures.append(repr(exc))
        else:
            opened.append(task.result())
    open_s = time.perf_counter() - t0
    sample = random.Random(5).sample(opened, min(SAMPLE, len(opened)))
    used = await asyncio.gather(*(_use(t) for t in sample), return_exceptions=True)
    sample_failures = [repr(u) for u in used if isinstance(u, BaseException)]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"opened": len(opened), "failed": len(failures),
                      "sample_failed": len(sample_failures),
                      "first_errors": (failures + sample_failures)[:5], "open_s": open_s,
                      "cpu_s": usage.ru_utime + usage.ru_stime}), flush=True)
    # Hold every tunnel until the parent has measured the proxy, then close.
    await loop.run_in_executor(None, sys.stdin.readline)
    for _, writer in opened:
        writer.close()
    print(json.dumps({"closed": len(opened)}), flush=True)


@dataclass
class IdleResult:
    tunnels: int
    errors: int
    open_s: float
    rss_mib: float
    pss_mib: float
    fds: int
    fds_beyond: int  # open fds minus 2 per tunnel: what is not per tunnel
    fd_base: int  # before any tunnel
    loadgen_cpu_s: float
    first_errors: list[str]


def measure(proxy: Server, count: int = TUNNELS) -> IdleResult:
    from bench import procfs

    before = procfs.usage(proxy.pid)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.idle", "--worker",
         json.dumps({"proxy": list(proxy.address), "count": count})],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=raise_nofile)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"idle load generator died ({proc.wait(timeout=10)})")
        report = json.loads(line)
        time.sleep(1.0)  # let the proxy settle every tunnel it accepted
        held = procfs.usage(proxy.pid)
        proc.stdin.write("close\n")
        proc.stdin.flush()
        proc.stdout.readline()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    opened = report["opened"]
    return IdleResult(
        tunnels=opened,
        errors=report["failed"] + report["sample_failed"],
        open_s=report["open_s"],
        rss_mib=held.rss / (1 << 20),
        pss_mib=held.pss / (1 << 20),
        fds=held.fds,
        fds_beyond=held.fds - 2 * opened,
        fd_base=before.fds,
        loadgen_cpu_s=report["cpu_s"],
        first_errors=report["first_errors"],
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", required=True)
    spec = json.loads(parser.parse_args().worker)
    import uvloop

    async def bounded() -> None:
        async with asyncio.timeout(TOTAL_TIMEOUT + 600):  # includes the parent's hold
            await _run(tuple(spec["proxy"]), spec["count"])

    uvloop.run(bounded())


if __name__ == "__main__":
    main()
