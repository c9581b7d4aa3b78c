"""Syscalls per connection (or per GiB) of one Portcullis, counted by strace.

Under bench/setupcost.py's light load by default, counted by `strace -f -c`:
a figure the shared machine's noise does not move.

    .venv/bin/python -m bench.syscalls [--tls | --bulk] [--env NAME=VALUE] [--duration 3]

The count is strace's summary over the whole load divided by the connections
closed in the decision log (set-up and start-up calls are a few hundred in all).
With `--bulk`, one 1 GiB TLS download through the proxy instead, per GiB: the
loop's wakeups (`epoll_pwait`, and `epoll_wait` for the proxy's own epoll)
and the splices per GiB, which CPU per GiB only shows through the noise
(bench/findings.md, "Bulk CPU per GiB and the edge-triggered epoll").
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from bench import bulk, connrate, procfs, servers, setupcost


def parse_summary(text: str) -> dict[str, int]:
    """`strace -c`'s table: calls per syscall."""
    calls: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            calls[fields[-1]] = int(fields[3])
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE")
    parser.add_argument("--duration", type=float, default=3.0, help="the load's (not --bulk)")
    parser.add_argument("--top", type=int, default=14)
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--tls", action="store_true",
                      help="the TLS rate load (bench/connrate.py, nginx as the origin)")
    load.add_argument("--bulk", action="store_true",
                      help="one 1 GiB TLS download (bench/bulk.py): syscalls per GiB")
    args = parser.parse_args()
    os.environ.update(dict(e.split("=", 1) for e in args.env))
    servers.raise_nofile()
    with servers.Workdir.create() as work:
        origin = servers.start_nginx(work) if args.tls or args.bulk else None
        d = work.sub("traced")
        summary = d / "strace.txt"
        proxy = servers.launch_portcullis(
            d, servers.portcullis_policy(servers.free_port()), label="traced",
            python=["strace", "-f", "-c", "-o", str(summary), sys.executable, "-m",
                    "portcullis.cli"])
        try:
            if origin is None:
                setupcost.measure(proxy, args.duration)
            elif args.bulk:
                bulk.download(str(work.ca_pem), proxy, origin)
            else:
                connrate.measure(str(work.ca_pem), proxy, args.duration)
        finally:
            # strace detaches on SIGTERM and would leave the proxy running: stop the proxy.
            for pid in procfs.tree(proxy.pid)[1:]:
                os.kill(pid, signal.SIGTERM)
            proxy.proc.wait(timeout=30)
            if origin is not None:
                origin.stop()
        closed = len(proxy.records("close"))
        calls = parse_summary(summary.read_text())
    total = sum(calls.values())
    if args.bulk:
        per, unit = servers.BULK_SIZE / bulk.GIB, "GiB (start-up included)"
    else:
        per, unit = closed, "connection"
    print(f"connections {closed}, syscalls per {unit} {total / per:.1f}")
    for name, count in sorted(calls.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {name:<16} {count / per:{'9.0f' if args.bulk else '6.2f'}}")


if __name__ == "__main__":
    main()
