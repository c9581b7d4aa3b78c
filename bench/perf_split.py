"""CPU per connection split by where it runs: the kernel, the interpreter
(libpython), uvloop/libuv, libc. Sampled by `perf record -e cpu-clock` (a
software clock: it works where this machine has no hardware counters) over
each target's process (every thread; one worker) while the load runs, the floor first.

    .venv/bin/python -m bench.perf_split [--tls] [--tree LABEL=DIR ...] [--sketch]
        [--duration 5] [--symbols N]

Where bench/instructions.py counts user-space instructions and
bench/syscalls.py counts syscalls, this puts time on both sides: the
samples of one object file, divided by the sampling rate and the
connections, are its microseconds per connection.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import ab, instructions, servers

RATE = 4000  # samples per second of CPU
_GROUPS = (("kernel", "[kernel"), ("libpython", "libpython"), ("uvloop", "loop.cpython"),
           ("libc", "libc.so"))


def samples_by_object(data: Path) -> dict[str, int]:
    """`perf report --sort dso`: samples per object file."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--sort", "dso", "-n", "--stdio"],
                         capture_output=True, text=True, check=True).stdout
    counts: dict[str, int] = {}
    for line in out.splitlines():
        match = re.match(r"\s*[\d.]+%\s+(\d+)\s+(\S.*?)\s*$", line)
        if match:
            counts[match.group(2)] = int(match.group(1))
    return counts


def top_symbols(data: Path, count: int) -> list[tuple[str, str, int]]:
    """`perf report --sort dso,symbol`: the `count` symbols with the most samples."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--sort", "dso,symbol", "-n",
                          "--stdio"], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        match = re.match(r"\s*[\d.]+%\s+(\d+)\s+(\S+)\s+\[.\]\s+(\S+)", line)
        if match:
            rows.append((match.group(2), match.group(3), int(match.group(1))))
    return sorted(rows, key=lambda row: -row[2])[:count]


def grouped(counts: dict[str, int]) -> dict[str, int]:
    out = dict.fromkeys([name for name, _ in _GROUPS] + ["other"], 0)
    for dso, n in counts.items():
        group = next((name for name, prefix in _GROUPS if dso.startswith(prefix)), "other")
        out[group] += n
    return out


def _sampled(proxy: servers.Server, data: Path, duration: float, ca: str | None
             ) -> tuple[dict[str, int], int]:
    """Samples per group of object files, and the connections the load made."""
    perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(RATE),
                             "-o", str(data), "-p", str(proxy.pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # perf attaches to every thread
    try:
        connections = instructions._load(proxy, duration, ca)
    finally:
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=60)
        proxy.stop()
    return grouped(samples_by_object(data)), connections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], help="label=dir (default main=src)")
    parser.add_argument("--duration", type=float, default=5.0)
    servers.add_sketch_option(parser)
    parser.add_argument("--symbols", type=int, default=0, metavar="N",
                        help="also print each target's N hottest symbols, us per connection")
    parser.add_argument("--tls", action="store_true",
                        help="the TLS rate load (bench/connrate.py, nginx as the origin)")
    args = parser.parse_args()
    if shutil.which("perf") is None:
        sys.exit("perf is not installed (Debian: linux-perf)")
    trees = dict(t.split("=", 1) for t in args.tree or ["main=src"])
    servers.raise_nofile()
    rows: dict[str, tuple[dict[str, int], int]] = {}
    with servers.Workdir.create() as work:
        origin = servers.start_nginx(work) if args.tls else None
        ca = str(work.ca_pem) if args.tls else None
        for label in ["floor", *trees, *(["sketch"] if args.sketch else [])]:
            proxy = (servers.start_floor_relay(work) if label == "floor"
                     else servers.start_protocol_sketch(work, args.sketch) if label == "sketch"
                     else ab.start(work, label, trees[label], None, {}))
            rows[label] = _sampled(proxy, work.root / f"perf.{label}", args.duration, ca)
            if args.symbols:
                print(f"{label}: hottest symbols, us per connection")
                for dso, symbol, n in top_symbols(work.root / f"perf.{label}", args.symbols):
                    print(f"  {n / RATE / rows[label][1] * 1e6:7.1f}  {dso:<28.28} {symbol}")
        if origin is not None:
            origin.stop()
    columns = [name for name, _ in _GROUPS] + ["other", "total"]
    print("us of CPU per connection, by where it ran")
    print(f"{'target':<12} {'conns':>6} " + " ".join(f"{c:>9}" for c in columns) + "  x floor")
    floor_total = None
    for label, (groups, connections) in rows.items():
        per = {k: v / RATE / connections * 1e6 for k, v in groups.items()}
        total = sum(per.values())
        floor_total = floor_total or total
        cells = " ".join(f"{per.get(c, total):9.0f}" for c in columns)
        print(f"{label:<12} {connections:6d} {cells}  {total / floor_total:6.2f}x")


if __name__ == "__main__":
    main()
