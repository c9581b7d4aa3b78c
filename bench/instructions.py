"""User-space instructions per connection, counted by valgrind's callgrind under
bench/setupcost.py's light load: unlike CPU time on this shared machine, the
count repeats to a fraction of a percent, so an A/B of one small change to the
per-connection path can be read off a single run.

    .venv/bin/python -m bench.instructions [--tree LABEL=DIR ...] [--env LABEL=NAME=VALUE]

Each target (the Python floor, then Portcullis from each source tree, as
bench/ab.py takes them) starts under `valgrind --tool=callgrind` with
instrumentation off, so start-up is not counted; it is switched on just before
the load (`callgrind_control -i on`) and the total read from the profile it
dumps when the load is over (`callgrind_control -d`), so neither start-up nor
exit is counted. The kernel's share (syscalls, TCP over loopback)
is not in the count: bench/syscalls.py counts the syscalls, bench/ab.py
weighs both together as CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import connrate, procfs, servers

# Under valgrind a start-up takes ten to fifty times as long.
START_TIMEOUT = 300.0


def _callgrind(out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
            "--dump-instr=no", "--compress-strings=no"]


def _total(profile: Path) -> int:
    match = re.search(r"^(?:summary|totals): (\d+)", profile.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no total in {profile}")
    return int(match.group(1))


def _load(proxy: servers.Server, duration: float, ca: str | None) -> int:
    """Run the light load (or with `ca`, the TLS rate load) for `duration` s;
    the connections completed."""
    start_at = time.time() + 0.2
    if ca is None:
        specs = [{"address": list(proxy.address), "start_at": start_at, "duration": duration}]
        module = "bench.setupcost"
    else:
        per = connrate.CLIENTS // connrate.PROCESSES
        specs = [{"ca": ca, "address": list(proxy.address), "connect": True, "clients": per,
                  "start_at": start_at, "duration": duration, "path": servers.SMALL_PATH}
                 ] * connrate.PROCESSES
        module = "bench.connrate"
    loads = [subprocess.Popen([sys.executable, "-m", module, "--worker", json.dumps(spec)],
                              stdout=subprocess.PIPE) for spec in specs]
    total = 0
    for load in loads:
        out, _ = load.communicate(timeout=duration + 120)
        result = json.loads(out)
        if result["n_errors"]:
            raise RuntimeError(f"{proxy.name}: {result['n_errors']} errors, {result['errors']}")
        total += int(result["total"])
    return total


def _measure(proxy: servers.Server, profile: Path, duration: float,
             idle: bool = False, ca: str | None = None) -> tuple[Path, int]:
    pid = proxy.proc.pid
    try:
        subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True,
                       capture_output=True, timeout=60)
        if idle:
            time.sleep(duration)
            connections = 0
        else:
            connections = _load(proxy, duration, ca)
        # Dumped now, the count leaves out the drain and the interpreter's exit.
        subprocess.run(["callgrind_control", "-d", str(pid)], check=True,
                       capture_output=True, timeout=120)
    finally:
        for each in reversed(procfs.tree(pid)):
            os.kill(each, signal.SIGTERM)
        proxy.proc.wait(timeout=120)
    return sorted(profile.parent.glob(profile.name + ".*"))[0], connections


def start_floor(work: servers.Workdir, profile: Path) -> servers.Server:
    d = work.sub("floor")
    port = servers.free_port()
    proc = servers.popen([*_callgrind(profile), sys.executable, "-m", "bench.floor_relay",
                          "--listen", f"127.0.0.1:{port}",
                          "--host", f"{servers.ORIGIN_NAME}={servers.ORIGIN_ADDR}"],
                         d / "stderr.log")
    servers.wait_port(("127.0.0.1", port), proc, "floor_relay", timeout=START_TIMEOUT)
    return servers.Server("floor", proc, ("127.0.0.1", port))


def start_portcullis(work: servers.Workdir, label: str, tree: str, env: dict[str, str],
                     profile: Path) -> servers.Server:
    return servers.launch_portcullis(
        work.sub(label), servers.portcullis_policy(servers.free_port()), label=label,
        python=[*_callgrind(profile), sys.executable, "-m", "portcullis.cli"],
        start_timeout=START_TIMEOUT, env=servers.tree_env(tree, env))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], help="label=dir (default main=src)")
    parser.add_argument("--env", action="append", default=[],
                        help="label=NAME=VALUE: an environment variable for one tree's process")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument("--tls", action="store_true",
                        help="the TLS rate load (bench/connrate.py, nginx as the origin)")
    parser.add_argument("--idle", action="store_true",
                        help="count with no load for --duration s (what is not per connection)")
    parser.add_argument("--save", help="a directory to keep each callgrind profile in")
    servers.add_sketch_option(parser)
    args = parser.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree or ["main=src"])
    envs: dict[str, dict[str, str]] = {label: {} for label in trees}
    for spec in args.env:
        label, name, value = spec.split("=", 2)
        envs[label][name] = value
    servers.raise_nofile()
    rows: list[tuple[str, int, int]] = []
    with servers.Workdir.create() as work:
        origin = servers.start_nginx(work) if args.tls else None
        ca = str(work.ca_pem) if args.tls else None
        labels = (([] if args.no_floor else ["floor"]) + list(trees)
                  + (["sketch"] if args.sketch else []))
        for label in labels:
            profile = work.root / f"callgrind.{label}"
            proxy = (start_floor(work, profile) if label == "floor" else
                     servers.start_protocol_sketch(work, args.sketch,
                                                   [*_callgrind(profile), sys.executable])
                     if label == "sketch" else
                     start_portcullis(work, label, trees[label], envs[label], profile))
            dump, connections = _measure(proxy, profile, args.duration, args.idle, ca)
            rows.append((label, _total(dump), connections))
            if args.save:
                Path(args.save).mkdir(parents=True, exist_ok=True)
                shutil.copy(dump, Path(args.save) / profile.name)
        if origin is not None:
            origin.stop()
    floor = next((total / n for label, total, n in rows if label == "floor"), None)
    print(f"{'target':<12} {'connections':>11} {'instructions/conn':>18} {'x floor':>8}")
    for label, total, n in rows:
        if not n:
            print(f"{label:<12} {n:11d} {total:18,d} (idle, in all)")
            continue
        ratio = f"{total / n / floor:7.2f}x" if floor else "-"
        print(f"{label:<12} {n:11d} {total / n:18,.0f} {ratio:>8}")


if __name__ == "__main__":
    main()
