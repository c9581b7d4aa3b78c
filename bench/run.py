"""`make bench`: every scenario against direct, Portcullis, Squid and tinyproxy in
one run, on loopback, with two floors in the bulk and rate tables (a minimal uvloop
CONNECT relay and HAProxy splicing); prints the table and rewrites bench/RESULTS.md.

    .venv/bin/python -m bench.run [--only bulk,rate,idle,policy,inspect] [--rounds 3]
        [--bulk-rounds 5] [--duration 5] [--tunnels 10000] [--no-write]

A partial run (--only, or smaller figures) prints but leaves RESULTS.md alone
unless --write is given. bench/findings.md (profiles, what each change bought)
is appended to RESULTS.md as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import re
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from bench import bulk, connrate, idle, procfs, servers
from bench.servers import Server, Workdir

HERE = Path(__file__).resolve().parent
BEGIN = "<!-- from here to the end marker: written by make bench (bench/run.py) -->"
END = "<!-- end of the part written by make bench -->"
# fds a proxy keeps besides its tunnels (listeners, epoll, logs, pipe pool): the
# reserve left when sizing a single-process run, and the "constant" allowed.
IDLE_FD_RESERVE = 64
IDLE_FD_CONSTANT = 100
SCENARIOS = ("bulk", "rate", "idle", "policy", "inspect")
# The floors: what the least a relay does costs, in Python (bench/floor_relay.py)
# and in C (HAProxy, no CONNECT); rows of the bulk and rate tables only.
FLOOR = "floor (uvloop)"
HAPROXY_FLOOR = "floor (haproxy splice)"
FLOORS = (FLOOR, HAPROXY_FLOOR)
# (label, start function); direct has no proxy.
PROXIES: list[tuple[str, Callable[[Workdir], Server]]] = [
    (FLOOR, servers.start_floor_relay),
    (HAPROXY_FLOOR, servers.start_haproxy),
    ("portcullis", lambda w: servers.start_portcullis(w)),
    ("portcullis x2", lambda w: servers.start_portcullis(w, workers=2, label="portcullis-w2")),
    ("squid", servers.start_squid),
    ("tinyproxy", servers.start_tinyproxy),
]


SETUP = """\
- origin: nginx, 2 workers, TLS 1.3 with a trustme ECDSA P-256 certificate on
  127.0.0.2:8443 (tunnels for bulk and rate) and plain HTTP on 127.0.0.2:8080
  (idle tunnels), serving a sparse 1 GiB file and a 1 KiB file from tmpfs;
- portcullis: `portcullis serve` on uvloop, one process, or `--workers 2` for
  `portcullis x2`; the name resolves through `resolver.hosts`, the decision log
  is a file on tmpfs (two JSON lines per connection, included in its cost);
- squid: one worker, no cache, hosts_file for the name, access log on tmpfs;
- tinyproxy: the name from a hosts file bind-mounted in a private mount
  namespace, `LogLevel Connect` to a file on tmpfs;
- floor (uvloop): bench/floor_relay.py, a CONNECT relay of about 100 lines on
  uvloop transports (no policy, no logging, the name from a table), one process;
- floor (haproxy splice): HAProxy in TCP mode, one thread, splicing forced both
  ways (`splice-auto` never chose it here) with 1 MiB pipes, no logging; it cannot
  answer CONNECT, so its own port forwards to the origin's TLS port and the
  clients connect to it as they do direct;
- every other proxy is asked `CONNECT bench.icr.io:PORT` and resolves the name itself;
- bulk client: curl through the proxy to /dev/null; rate clients: 2 processes of
  25 threads, Python ssl (a real ClientHello with SNI, full handshake, the
  certificate verified), `Connection: close`; idle: one asyncio process;
- CPU, RSS, PSS and fds are read from /proc over each server's process tree.\
"""


def fmt(value: float | None, spec: str = ".2f") -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return format(value, spec)


def ratio(a: float | None, b: float | None) -> str:
    return fmt(a / b) + "x" if a is not None and b else "-"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


class Report:
    def __init__(self) -> None:
        self.sections: list[str] = []
        self.targets: list[tuple[str, str, str, bool]] = []

    def section(self, title: str, text: str) -> None:
        block = f"### {title}\n\n{text}\n"
        print(block, flush=True)
        self.sections.append(block)

    def target(self, what: str, goal: str, got: str, ok: bool) -> None:
        self.targets.append((what, goal, got, ok))


def run_bulk(report: Report, work: Workdir, origin: Server, proxies: dict[str, Server],
             rounds: int) -> None:
    runs: dict[str, list[bulk.BulkResult]] = {name: [] for name in ["direct", *proxies]}
    for _ in range(rounds):  # interleaved, so drift on the shared machine hits all alike
        for name in runs:
            runs[name].append(bulk.download(str(work.ca_pem), proxies.get(name), origin))

    def med(name: str, pick: Callable[[bulk.BulkResult], float | None]) -> float | None:
        values = [v for v in map(pick, runs[name]) if v is not None]
        return statistics.median(values) if values else None

    direct = med("direct", lambda r: r.mib_s)
    squid_cpu = med("squid", lambda r: r.proxy_cpu_s_per_gib) if "squid" in runs else None
    squid_speed = med("squid", lambda r: r.mib_s) if "squid" in runs else None
    rows = []
    for name in runs:
        speed, cpu = med(name, lambda r: r.mib_s), med(name, lambda r: r.proxy_cpu_s_per_gib)
        rows.append([name, fmt(speed, ".0f"), ratio(speed, direct), fmt(cpu, ".3f"),
                     ratio(cpu, squid_cpu), fmt(med(name, lambda r: r.client_cpu_s_per_gib)),
                     fmt(med(name, lambda r: r.origin_cpu_s_per_gib))])
        if name.startswith("portcullis"):
            assert speed is not None and direct is not None
            report.target(f"bulk throughput, {name}", ">= 0.95x direct", ratio(speed, direct),
                          speed >= 0.95 * direct)
            if squid_speed:
                report.target(f"bulk throughput, {name} / Squid", ">= 1x",
                              ratio(speed, squid_speed), speed >= squid_speed)
            if cpu is not None and squid_cpu:
                report.target(f"bulk CPU/GiB, {name}", "<= 0.5x Squid", ratio(cpu, squid_cpu),
                              cpu <= 0.5 * squid_cpu)
    report.section(
        f"Bulk: 1 GiB over TLS through a CONNECT tunnel (median of {rounds}, curl -> /dev/null)",
        table(["target", "MiB/s", "x direct", "proxy CPU s/GiB", "x Squid", "curl CPU s/GiB",
               "nginx CPU s/GiB"], rows))


def slice_spread(ours: list[connrate.RateResult], floor: list[connrate.RateResult]) -> str:
    """The CPU ratio of each round's pair of slices, lowest and highest: how far one
    run's noise reaches (the target is judged on the whole run's ratio)."""
    ratios = [a.cpu_us_per_conn / b.cpu_us_per_conn for a, b in zip(ours, floor, strict=True)
              if a.cpu_us_per_conn and b.cpu_us_per_conn]
    return f" (slices {min(ratios):.2f}x-{max(ratios):.2f}x)" if len(ratios) > 1 else ""


def run_rate(report: Report, work: Workdir, proxies: dict[str, Server], duration: float,
             rounds: int) -> None:
    targets: dict[str, Server | None] = {"direct": None, **proxies}
    slices: dict[str, list[connrate.RateResult]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, proxy in targets.items():
            slices[name].append(connrate.measure(str(work.ca_pem), proxy, duration))
    results = {name: connrate.combine(parts) for name, parts in slices.items()}
    direct = results["direct"].rate
    squid, floor = results.get("squid"), results.get(FLOOR)
    rows = []
    for name, r in results.items():
        rows.append([name, fmt(r.rate, ".0f"), ratio(r.rate, direct),
                     ratio(r.rate, squid.rate if squid else None), fmt(r.p50_ms),
                     fmt(r.p99_ms), str(r.errors), fmt(r.proxy_cores),
                     fmt(r.cpu_us_per_conn, ".0f"), fmt(r.loadgen_cores)])
        if r.first_errors:
            print(f"{name} errors: {r.first_errors}", file=sys.stderr)
        if name.startswith("portcullis") and squid is not None:
            report.target(f"connection rate, {name}", ">= 1.5x Squid", ratio(r.rate, squid.rate),
                          r.rate >= 1.5 * squid.rate)
            report.target(f"p99 set-up, {name}", "<= Squid's",
                          f"{r.p99_ms:.1f} ms vs {squid.p99_ms:.1f} ms", r.p99_ms <= squid.p99_ms)
        if name.startswith("portcullis") and floor is not None:
            cpu, floor_cpu = r.cpu_us_per_conn, floor.cpu_us_per_conn
            report.target(f"CPU per connection, {name} / {FLOOR}", "<= 1.5x",
                          ratio(cpu, floor_cpu) + slice_spread(slices[name], slices[FLOOR]),
                          cpu is not None and floor_cpu is not None and cpu <= 1.5 * floor_cpu)
            report.target(f"connection rate, {name} / {FLOOR}", ">= 0.9x",
                          ratio(r.rate, floor.rate), r.rate >= 0.9 * floor.rate)
    report.section(
        f"Connection rate: CONNECT + TLS handshake + 1 KiB, {connrate.CLIENTS} clients, "
        f"{rounds} interleaved slices of {duration - connrate.WARMUP:.0f} s per target",
        table(["target", "conn/s", "x direct", "x Squid", "p50 ms", "p99 ms", "errors",
               "proxy cores", "proxy CPU us/conn", "loadgen cores"], rows))


def run_idle(report: Report, proxies: dict[str, Server], tunnels: int) -> None:
    rows = []
    # One process cannot hold 2 x 10,000 sockets under a 20,000 hard limit; a
    # single-process proxy gets as many tunnels as its fds allow, and
    # `portcullis x2` (two processes) the full count.
    fit = min(tunnels, (servers.NOFILE - IDLE_FD_RESERVE) // 2)
    for name, proxy in proxies.items():
        if name in FLOORS:
            continue
        count = tunnels if name.endswith("x2") else fit
        r = idle.measure(proxy, count)
        if r.first_errors:
            print(f"{name} errors: {r.first_errors}", file=sys.stderr)
        rows.append([name, str(count), str(r.tunnels), str(r.errors), fmt(r.open_s, ".1f"),
                     fmt(r.rss_mib, ".0f"), fmt(r.pss_mib, ".0f"), str(r.fds),
                     str(r.fds_beyond), str(r.fd_base), fmt(r.loadgen_cpu_s, ".1f")])
        if name.startswith("portcullis"):
            # Summed RSS counts the pages forked workers share once per process;
            # PSS counts them once, so a multi-process row is judged by PSS.
            memory = r.rss_mib if name == "portcullis" else r.pss_mib
            kind = "RSS" if name == "portcullis" else "PSS"
            report.target(f"{count} idle tunnels, {name}",
                          "0 errors, RSS <= 150 MiB, <= 2 fds/tunnel + constant",
                          f"{r.errors} errors, {kind} {memory:.0f} MiB, 2/tunnel + {r.fds_beyond}",
                          r.errors == 0 and r.tunnels == count and memory <= 150
                          and r.fds_beyond <= IDLE_FD_CONSTANT)
    report.section(
        f"Capacity: concurrent idle tunnels (RLIMIT_NOFILE hard limit here: "
        f"{servers.NOFILE} per process)",
        table(["target", "asked", "open", "errors", "open s", "RSS MiB", "PSS MiB", "fds",
               "fds - 2/tunnel", "fds before", "loadgen CPU s"], rows))


def run_policy(report: Report, runs: int = 2) -> None:
    # A one-core CPU-bound loop: other tenants of the machine can only slow it
    # down, so the best of a few runs is the figure (as timeit does).
    outputs, rates = [], []
    for _ in range(runs):
        done = subprocess.run([sys.executable, str(HERE / "policy_bench.py")],
                              capture_output=True, text=True, timeout=300, check=True)
        match = re.search(r"decisions_per_s=([\d,]+)", done.stdout)
        assert match is not None, done.stdout
        rates.append(float(match.group(1).replace(",", "")))
        outputs.append(done.stdout.strip())
    rate = max(rates)
    report.target("policy decisions/s (100,000 rules)", ">= 200,000", f"{rate:,.0f}",
                  rate >= 200_000)
    report.section(f"Policy: bench/policy_bench.py, best of {runs}",
                   "```\n" + "\n\n".join(outputs) + "\n```")


@contextlib.contextmanager
def running(work: Workdir, names: list[str]) -> Iterator[dict[str, Server]]:
    started: dict[str, Server] = {}
    try:
        for label, start in PROXIES:
            if label == HAPROXY_FLOOR and label in names and not servers.haproxy_installed():
                print(f"haproxy is not installed: no {label} row", file=sys.stderr)
            elif label in names:
                started[label] = start(work)
        yield started
    finally:
        for server in started.values():
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--proxies", default=",".join(label for label, _ in PROXIES))
    parser.add_argument("--rounds", type=int, default=3, help="connection-rate slices per target")
    parser.add_argument("--bulk-rounds", type=int, default=5, help="downloads per target")
    parser.add_argument("--duration", type=float, default=connrate.DURATION)
    parser.add_argument("--tunnels", type=int, default=idle.TUNNELS)
    parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args()
    only = args.only.split(",")
    names = args.proxies.split(",")
    if not {"bulk", "rate"} & set(only):
        names = [name for name in names if name not in FLOORS]
    full = (set(only) == set(SCENARIOS) and len(names) == len(PROXIES) and args.rounds >= 3
            and args.bulk_rounds >= 3
            and args.duration >= connrate.DURATION and args.tunnels >= idle.TUNNELS)
    write = full if args.write is None else args.write
    servers.raise_nofile()
    report = Report()
    started = datetime.datetime.now(datetime.UTC)
    info = procfs.machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    if "policy" in only:
        run_policy(report)
    if {"bulk", "rate", "idle", "inspect"} & set(only):
        with Workdir.create() as work:
            origin = servers.start_nginx(work)
            try:
                with running(work, names) as proxies:
                    if "bulk" in only:
                        run_bulk(report, work, origin, proxies, args.bulk_rounds)
                    if "rate" in only:
                        run_rate(report, work, proxies, args.duration, args.rounds)
                    if "idle" in only:
                        run_idle(report, proxies, args.tunnels)
                if "inspect" in only:
                    from bench import inspect_bench  # it imports this module's tables

                    inspect_bench.run(report, work, origin, args.bulk_rounds, args.duration)
            finally:
                origin.stop()
    elapsed = (datetime.datetime.now(datetime.UTC) - started).total_seconds()
    targets = table(["target", "goal", "measured", "met"],
                    [[w, g, m, "yes" if ok else "**no**"] for w, g, m, ok in report.targets])
    print("### Targets\n\n" + targets + f"\n\nrun took {elapsed:.0f} s")
    if write:
        write_results(report, info, started, elapsed, targets)
        print(f"wrote {HERE / 'RESULTS.md'}")


def write_results(report: Report, info: dict[str, str], started: datetime.datetime,
                  elapsed: float, targets: str) -> None:
    machine = "\n".join(f"- {k}: {v}" for k, v in info.items())
    findings = HERE / "findings.md"
    text = (
        "# Benchmark results\n\n"
        "Written by `make bench` (bench/run.py); the findings section at the end is\n"
        "bench/findings.md. All servers on loopback on one shared 2-core machine: absolute\n"
        "figures drift between runs, ratios within one run hold.\n\n"
        f"Run: {started:%Y-%m-%d %H:%M} UTC, {elapsed:.0f} s.\n\n"
        f"## Machine\n\n{machine}\n\n## Set-up\n\n{SETUP}\n\n"
        f"## Targets\n\n{targets}\n\n"
        "## Figures\n\n" + "\n".join(report.sections)
    )
    if findings.exists():
        text += "\n" + findings.read_text()
    # Other sections of RESULTS.md (the soak run's) belong to other tools:
    # only the part between the markers is ours to replace.
    path = HERE / "RESULTS.md"
    old = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{text.rstrip()}\n{END}"
    if BEGIN in old and END in old:
        head, _, rest = old.partition(BEGIN)
        _, _, tail = rest.partition(END)
        path.write_text(head + block + tail)
    else:
        path.write_text(block + ("\n\n" + old if old else "\n"))


if __name__ == "__main__":
    main()
