"""`make fuzz`: run each atheris harness for a set time and record the figures.

Each harness runs in its own process (libFuzzer owns the process and exits on
the first crash). The corpus is kept under build/fuzz/ between runs, so a later
run starts where the last one stopped. The figures (inputs tried, coverage,
crashes) replace the block between the markers in docs/security.md, so the
document always shows each harness's last run (naming harnesses runs only those,
and the others' rows stay); the exit status is 1 when anything crashed.

    python tests/fuzz/run_atheris.py --seconds 60
    python tests/fuzz/run_atheris.py --runs 1000000 --seconds 1800   # a count, time as a cap
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HARNESSES = {
    "http1": ("tests/fuzz/atheris_http1.py", "parse_request_head, check_request, authorities"),
    "tls": ("tests/fuzz/atheris_tls.py", "parse_client_hello (single record and reassembly)"),
    "keepalive": ("tests/fuzz/atheris_keepalive.py",
                  "the plain-HTTP keep-alive loop: heads, bodies, trailers, forwarding"),
    "proxy_protocol": ("tests/fuzz/atheris_proxy_protocol.py",
                       "parse_proxy_header (PROXY protocol v1 and v2)"),
    "proxy_auth": ("tests/fuzz/atheris_proxy_auth.py",
                   "parse_proxy_authorization, the parent's credentials file"),
    "oci": ("tests/fuzz/atheris_oci.py", "classify (OCI requests) and judge"),
}
BEGIN = "<!-- atheris:begin -->"
END = "<!-- atheris:end -->"


@dataclass
class Run:
    name: str
    target: str
    seconds: int
    executed: int
    per_second: int
    coverage: int
    corpus: int
    crashes: list[Path]
    exit_code: int


def _stat(output: str, key: str) -> int:
    match = re.search(rf"stat::{key}:\s+(\d+)", output)
    return int(match.group(1)) if match else 0


def run_one(name: str, seconds: int, work: Path, runs: int = 0) -> Run:
    script, target = HARNESSES[name]
    corpus = work / "corpus" / name
    crashes = work / "crashes"
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    before = set(crashes.glob(f"{name}-*"))
    argv = [
        sys.executable, str(ROOT / script), f"-max_total_time={seconds}", f"-runs={runs or -1}",
        "-print_final_stats=1",
        f"-artifact_prefix={crashes}/{name}-", "-rss_limit_mb=2048", str(corpus),
    ]
    print(f"fuzzing {name} for {f'{runs:,} inputs or ' if runs else ''}{seconds} s ...",
          flush=True)
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                          timeout=seconds * 3 + 120, check=False)
    output = proc.stdout + proc.stderr
    (work / f"{name}.log").write_text(output)
    elapsed = time.monotonic() - started
    executed = _stat(output, "number_of_executed_units")
    coverage = [int(c) for c in re.findall(r"cov: (\d+)", output)]
    found = sorted(set(crashes.glob(f"{name}-*")) - before)
    return Run(
        name=name, target=target, seconds=round(elapsed),
        executed=executed,
        # libFuzzer reports 0 when it stops on -runs; the wall-clock rate then.
        per_second=_stat(output, "average_exec_per_sec") or round(executed / max(elapsed, 1)),
        coverage=max(coverage, default=0),
        corpus=sum(1 for _ in corpus.iterdir()),
        crashes=found, exit_code=proc.returncode,
    )


def _kept_rows(old_block: str, ran: set[str]) -> list[str]:
    """The table rows of harnesses not run this time, with the day they were run:
    running one harness must not erase the others' figures."""
    found = re.search(r"(\d{4}-\d\d-\d\d \d\d:\d\d) UTC", old_block)
    old_when = found.group(1) if found else "?"
    rows = []
    for line in old_block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or cells[0] not in HARNESSES or cells[0] in ran:
            continue
        if len(cells) == 8:  # a row from before the `run` column
            cells.insert(2, old_when)
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def report(runs: list[Run], old_block: str = "") -> str:
    atheris_version = subprocess.run(
        [sys.executable, "-c", "import importlib.metadata as m; print(m.version('atheris'))"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()
    now = datetime.datetime.now(datetime.UTC)
    when, day = now.strftime("%Y-%m-%d %H:%M UTC"), now.strftime("%Y-%m-%d %H:%M")
    lines = [
        BEGIN,
        f"Last `make fuzz`: {when} ({', '.join(r.name for r in runs)}), atheris"
        f" {atheris_version}, Python {platform.python_version()}, {platform.machine()}.",
        "",
        "| harness | code under test | run (UTC) | seconds | inputs tried | inputs/s "
        "| coverage edges | corpus | crashes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = {}
    for r in runs:
        crashes = ", ".join(str(p.relative_to(ROOT)) for p in r.crashes) or "0"
        rows[r.name] = (
            f"| {r.name} | {r.target} | {day} | {r.seconds} | {r.executed:,} | {r.per_second} "
            f"| {r.coverage} | {r.corpus} | {crashes} |"
        )
    for row in _kept_rows(old_block, set(rows)):
        rows[row.split("|")[1].strip()] = row
    lines.extend(rows[name] for name in HARNESSES if name in rows)
    lines.append(END)
    return "\n".join(lines)


def write_report(doc: Path, block: str) -> None:
    text = doc.read_text() if doc.exists() else "# Security\n"
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n## Fuzzing figures\n\n" + block + "\n"
    doc.write_text(text)


def old_report(doc: Path) -> str:
    text = doc.read_text() if doc.exists() else ""
    return text.partition(BEGIN)[2].partition(END)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="per harness (a cap with --runs)")
    parser.add_argument("--runs", type=int, default=0,
                        help="inputs per harness (0: until --seconds)")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "fuzz")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "security.md")
    parser.add_argument("harness", nargs="*", default=list(HARNESSES))
    args = parser.parse_args()
    runs = [run_one(name, args.seconds, args.work, args.runs) for name in args.harness]
    block = report(runs, old_report(args.doc))
    write_report(args.doc, block)
    print(block)
    failed = [r for r in runs if r.crashes or r.exit_code != 0]
    for r in failed:
        print(f"{r.name}: exit {r.exit_code}, see {args.work / (r.name + '.log')}",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
