"""Syscalls per connection (or per GiB) of one Portcullis, counted by strace.

Under bench/setupcost.py's light load by default, counted by `strace -f -c`:
a figure the shared machine's noise does not move.

    .venv/bin/python -m bench.syscalls [--tls | --bulk] [--env NAME=VALUE] [--duration 3]

strace attaches once the proxy listens (start-up is not counted) and detaches
when the load is over; the count is its summary divided by the connections
closed in the decision log.
With `--bulk`, one 1 GiB TLS download through the proxy instead, per GiB: the
loop's wakeups (`epoll_pwait`, and `epoll_wait` for the proxy's own epoll)
and the splices per GiB, which CPU per GiB only shows through the noise
(bench/findings.md, "Bulk CPU per GiB and the edge-triggered epoll").
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess

from bench import bulk, connrate, servers, setupcost


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
            d, servers.portcullis_policy(servers.free_port()), label="traced")
        # Attached once the proxy listens, so its start-up (imports: thousands of
        # stat, open and read calls) is not in the count; -f takes every thread.
        tracer = subprocess.Popen(["strace", "-f", "-c", "-o", str(summary), "-p", str(proxy.pid)],
                                  stderr=subprocess.PIPE, text=True)
        try:
            assert tracer.stderr is not None
            tracer.stderr.readline()  # "strace: Process N attached"
            if origin is None:
                setupcost.measure(proxy, args.duration)
            elif args.bulk:
                bulk.download(str(work.ca_pem), proxy, origin)
            else:
                connrate.measure(str(work.ca_pem), proxy, args.duration)
        finally:
            tracer.send_signal(signal.SIGINT)  # detaches and writes the summary
            tracer.communicate(timeout=60)
            proxy.stop()
            if origin is not None:
                origin.stop()
        closed = len(proxy.records("close"))
        calls = parse_summary(summary.read_text())
    total = sum(calls.values())
    if args.bulk:
        per, unit = servers.BULK_SIZE / bulk.GIB, "GiB"
    else:
        per, unit = closed, "connection"
    print(f"connections {closed}, syscalls per {unit} {total / per:.1f}")
    for name, count in sorted(calls.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {name:<16} {count / per:{'9.0f' if args.bulk else '6.2f'}}")


if __name__ == "__main__":
    main()
