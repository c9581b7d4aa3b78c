"""Profile Portcullis under one bench scenario with py-spy and print where time goes.

    .venv/bin/python -m bench.profile rate|light|bulk [--no-uvloop] [--native] [--top 30]

Starts nginx and one Portcullis process, attaches `py-spy record` (raw collapsed
stacks, idle frames dropped), runs the scenario, then prints the functions with
the most samples, self and inclusive. The raw stacks stay in the printed path
for a flame graph (e.g. inferno / flamegraph.pl).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import bulk, connrate, servers, setupcost


def summarize(raw: Path, top: int) -> str:
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            incl_counts[frame] += count
    out = [f"{total} samples"]
    for title, counter in (("self", self_counts), ("inclusive", incl_counts)):
        out.append(f"\n-- {title} --")
        for frame, count in counter.most_common(top):
            out.append(f"{100 * count / total:5.1f}%  {frame}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["rate", "light", "bulk"])
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--native", action="store_true")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--duration", type=float, default=8.0)
    args = parser.parse_args()
    servers.raise_nofile()
    raw = Path(tempfile.mkdtemp(prefix="portcullis-profile-")) / f"{args.scenario}.txt"
    with servers.Workdir.create() as work:
        # The light load runs its own origin.
        origin = None if args.scenario == "light" else servers.start_nginx(work)
        proxy = servers.start_portcullis(work, uvloop=not args.no_uvloop)
        try:
            spy = [sys.prefix + "/bin/py-spy", "record", "--pid", str(proxy.pid), "--format",
                   "raw", "--rate", "250", "--output", str(raw), "--nonblocking"]
            if args.native:
                spy.append("--native")
            recorder = subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)
            t0 = time.perf_counter()
            if args.scenario == "rate":
                result: object = connrate.measure(str(work.ca_pem), proxy, args.duration)
            elif args.scenario == "light":
                result = setupcost.measure(proxy, args.duration)
            else:
                assert origin is not None
                result = bulk.download(str(work.ca_pem), proxy, origin)
            print(f"{result}  ({time.perf_counter() - t0:.1f} s)")
            recorder.send_signal(2)  # SIGINT: py-spy writes its output and exits
            recorder.wait(timeout=30)
        finally:
            proxy.stop()
            if origin is not None:
                origin.stop()
    print(summarize(raw, args.top))
    print(f"raw stacks: {raw}")


if __name__ == "__main__":
    main()
