"""Interleaved A/B of Portcullis's CPU per connection: the same rate scenario
(bench/connrate.py) against Portcullis run from two or more source trees, and the
Python floor, slice after slice, so that drift on the shared machine hits each
alike.

    .venv/bin/python -m bench.ab --tree base=/tmp/base/src --tree new=src [--rounds 4]
    .venv/bin/python -m bench.ab --tree new=src --profile /tmp/new.prof --rounds 1
    .venv/bin/python -m bench.ab --light --tree base=/tmp/base/src --tree new=src --rounds 6
    .venv/bin/python -m bench.ab --tree main=src --tree nolog=bench/ablated \
        --env nolog=PROTO_ABLATE=log

`--light` swaps the TLS rate scenario for bench/setupcost.py (CONNECT, a real
ClientHello, 1 KiB back, no crypto in the load), which leaves the proxy the CPU
and repeats within a few percent where the TLS scenario swings by a quarter.

A tree is a directory holding the `portcullis` package; it goes first on
PYTHONPATH, so the venv's own (editable) install is shadowed. `--profile` runs
each Portcullis under cProfile with a CPU clock (time.process_time: wall-clock
profilers charge a preempted syscall on this contended machine to the code
that made it, bench/RESULTS.md) and writes `<path>.<label>` on exit.
"""

from __future__ import annotations

import argparse
import pstats
import sys

from bench import connrate, servers, setupcost

_PROFILED = """\
import cProfile, runpy, sys, time
out = sys.argv.pop(1)
profile = cProfile.Profile(time.process_time)
profile.enable()
try:
    runpy.run_module("portcullis.cli", run_name="__main__")
except SystemExit:
    pass
finally:
    profile.disable()
    profile.dump_stats(out)
"""


def start(work: servers.Workdir, label: str, tree: str, profile: str | None,
          env: dict[str, str]) -> servers.PortcullisServer:
    d = work.sub(label)
    python = None
    if profile is not None:
        script = d / "profiled.py"
        script.write_text(_PROFILED)
        python = [sys.executable, str(script), f"{profile}.{label}"]
    return servers.launch_portcullis(d, servers.portcullis_policy(servers.free_port()),
                                     label=label, python=python,
                                     env=servers.tree_env(tree, env))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="label=dir")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument("--profile", help="path prefix for cProfile output (CPU clock)")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--light", action="store_true", help="bench/setupcost.py's load")
    servers.add_sketch_option(parser)
    parser.add_argument("--env", action="append", default=[],
                        help="label=NAME=VALUE: an environment variable for one tree's process")
    args = parser.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    envs: dict[str, dict[str, str]] = {label: {} for label in trees}
    for spec in args.env:
        label, name, value = spec.split("=", 2)
        envs[label][name] = value
    servers.raise_nofile()
    with servers.Workdir.create() as work:
        origin = None if args.light else servers.start_nginx(work)
        running: dict[str, servers.Server] = {}
        try:
            if not args.no_floor:
                running["floor"] = servers.start_floor_relay(work)
            for label, tree in trees.items():
                running[label] = start(work, label, tree, args.profile, envs[label])
            if args.sketch:
                running["sketch"] = servers.start_protocol_sketch(work, args.sketch)
            slices: dict[str, list[connrate.RateResult]] = {n: [] for n in running}
            for _ in range(args.rounds):
                for name, proxy in running.items():
                    slices[name].append(
                        setupcost.measure(proxy, args.duration) if args.light
                        else connrate.measure(str(work.ca_pem), proxy, args.duration))
        finally:
            for proxy in running.values():
                proxy.stop()
            if origin is not None:
                origin.stop()
    print(f"{'target':<12} {'conn/s':>7} {'us/conn':>8}  slices (us/conn)  errors")
    for name, parts in slices.items():
        r = connrate.combine(parts)
        each = " ".join(f"{p.cpu_us_per_conn:.0f}" for p in parts if p.cpu_us_per_conn)
        print(f"{name:<12} {r.rate:7.0f} {r.cpu_us_per_conn or 0:8.0f}  {each:<16}  {r.errors}")
    if args.profile:
        for label in trees:
            print(f"\n== {label}: cProfile, CPU clock ==")
            stats = pstats.Stats(f"{args.profile}.{label}")
            stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
