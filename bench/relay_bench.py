"""Quick developer bench for proxy/relay.py: bulk bytes over loopback.

    .venv/bin/python bench/relay_bench.py [--mib 1024] [--loop uvloop|asyncio]

Runs the same transfer direct (source -> sink), through relay() on the splice
path and through relay() on the copy path. The relay runs in a child process so
its CPU seconds (user + system, getrusage) are the relay's alone. Not a test:
on a shared machine the absolute numbers drift; compare rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import resource
import socket
import threading
import time
from multiprocessing.connection import Connection

from portcullis.proxy import loop as proxy_loop
from portcullis.proxy.relay import RelayResult, relay

CHUNK = 1024 * 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def serve_one(listener: socket.socket, sink: tuple[str, int], use_splice: bool,
              use_uvloop: bool, report: Connection) -> None:
    """Child: accept one client, dial the sink, relay, send back (result, cpu seconds)."""

    async def main() -> tuple[RelayResult, float]:
        loop = asyncio.get_running_loop()
        listener.setblocking(False)
        client, _ = await loop.sock_accept(listener)
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.setblocking(False)
        await loop.sock_connect(upstream, sink)
        start = cpu_seconds()
        result = await relay(client, upstream, use_splice=use_splice)
        return result, cpu_seconds() - start

    report.send(proxy_loop.run(main(), use_uvloop=use_uvloop))


def source(address: tuple[str, int], total: int) -> None:
    data = memoryview(bytes(CHUNK))
    with socket.create_connection(address) as sock:
        sent = 0
        while sent < total:
            sock.sendall(data[: min(CHUNK, total - sent)])
            sent += CHUNK
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # wait for the far side to finish


def sink(listener: socket.socket, received: list[int]) -> None:
    conn, _ = listener.accept()
    buf = bytearray(CHUNK)
    n = 0
    with conn:
        while got := conn.recv_into(buf):
            n += got
    received.append(n)


def transfer(total: int, via: str, use_uvloop: bool) -> tuple[float, float | None]:
    """Seconds of wall time and relay CPU seconds (None when direct)."""
    sink_listener = socket.create_server(("127.0.0.1", 0))
    received: list[int] = []
    sink_thread = threading.Thread(target=sink, args=(sink_listener, received))
    sink_thread.start()
    child = None
    if via == "direct":
        target = sink_listener.getsockname()
    else:
        relay_listener = socket.create_server(("127.0.0.1", 0))
        target = relay_listener.getsockname()
        parent_end, child_end = mp.get_context("fork").Pipe()
        child = mp.get_context("fork").Process(
            target=serve_one,
            args=(relay_listener, sink_listener.getsockname(), via == "splice", use_uvloop,
                  child_end),
        )
        child.start()
        relay_listener.close()
    start = time.perf_counter()
    source(target, total)
    sink_thread.join()
    wall = time.perf_counter() - start
    sink_listener.close()
    cpu = None
    if child is not None:
        result, cpu = parent_end.recv()
        child.join()
        assert result.bytes_up == total, result
    assert received == [total], received
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    total = args.mib * CHUNK
    gib = total / (1 << 30)
    print(f"{args.mib} MiB over loopback, loop={args.loop}, best of {args.rounds} rounds")
    walls: dict[str, list[float]] = {"direct": [], "splice": [], "copy": []}
    cpus: dict[str, list[float]] = {"splice": [], "copy": []}
    # Interleaved rounds, best of each: other load on a shared machine only slows runs down.
    for _ in range(args.rounds):
        for via in walls:
            wall, cpu = transfer(total, via, args.loop == "uvloop")
            walls[via].append(wall)
            if cpu is not None:
                cpus[via].append(cpu)
    direct = min(walls["direct"])
    print(f"{'path':<8} {'MiB/s':>9} {'x direct':>9} {'relay CPU s/GiB':>16}")
    for via, runs in walls.items():
        cpu_text = f"{min(cpus[via]) / gib:16.3f}" if via in cpus else f"{'-':>16}"
        print(f"{via:<8} {args.mib / min(runs):9.0f} {direct / min(runs):9.2f} {cpu_text}")

if __name__ == "__main__":
    main()
