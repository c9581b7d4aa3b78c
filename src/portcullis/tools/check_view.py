"""How `portcullis check` shows its results: a rich table, JSON, a progress line.

The tables go to stdout and read the same with or without a terminal (rich
drops colours when stdout is not a TTY); the progress display goes to stderr,
and only when stderr is a terminal, so pipes and logs never see it.
"""

from __future__ import annotations

import json
import sys
import threading
from types import TracebackType
from typing import IO

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from portcullis.tools.check_report import STEPS, NameReport, Report, Status, Step
from portcullis.tools.doctor import Observer

MARKS = {Status.OK: "[green]✓[/]", Status.WARN: "[yellow]![/]", Status.FAIL: "[red]✗[/]",
         Status.SKIP: "[dim]-[/]"}
HEADINGS = {"dns": "DNS", "connect": "CONNECT", "tls": "TLS", "http": "GET /v2/"}


def _cell(step: Step | None) -> str:
    if step is None:
        return ""
    text = step.detail.replace("[", r"\[")
    return f"{MARKS[step.status]} {text}".rstrip()


def _via(row: NameReport) -> str:
    if row.via != "direct":
        return "proxy"
    return f"direct (NO_PROXY {row.bypass})" if row.bypass not in ("localhost", "loopback") \
        else f"direct ({row.bypass})"


def names_table(report: Report) -> Table:
    via = f" through {report.proxy}" if report.proxy else ""
    if report.no_proxy:
        via += f", NO_PROXY={report.no_proxy}".replace("[", r"\[")
    table = Table(title=f"names{via}", title_justify="left", show_lines=False)
    table.add_column("NAME", no_wrap=True)
    table.add_column("ROLE")
    if report.mixed:
        table.add_column("VIA")
    for step in STEPS:
        heading = HEADINGS[step]
        if step == "connect" and report.proxy is None:
            heading = "TCP 443"
        elif step == "connect" and report.mixed:
            heading = "CONNECT / TCP 443"
        table.add_column(heading, overflow="fold")
    for row in sorted(report.names, key=lambda r: (r.failure is None, r.label)):
        path = [_via(row).replace("[", r"\[")] if report.mixed else []
        table.add_row(row.label, ",".join(row.roles), *path, *(_cell(row.step(s)) for s in STEPS))
    return table


def pull_table(report: Report) -> Table:
    table = Table(title=f"pull {report.image}", title_justify="left")
    for heading in ("STEP", "OBJECT", "RESULT"):
        table.add_column(heading, overflow="fold")
    for step in report.pull:
        detail = step.detail.replace("[", r"\[")
        table.add_row(step.step, step.target, f"{MARKS[step.status]} {detail}")
    return table


def render_text(report: Report, out: IO[str] | None = None) -> None:
    stream = out or sys.stdout
    # Off a terminal rich would wrap at 80 columns; a log line is better whole.
    width = None if stream.isatty() else 160
    console = Console(file=stream, width=width, highlight=False, soft_wrap=False)
    console.print(names_table(report))
    if report.image:
        console.print(pull_table(report))
    for diagnosis in report.diagnoses:
        mark = {"error": "[red]✗[/]", "warning": "[yellow]![/]"}.get(diagnosis.severity, "-")
        console.print(f"{mark} {diagnosis.message.replace('[', chr(92) + '[')}")
    blocked = sum(1 for row in report.names if row.failure is not None)
    pull_failed = any(step.status is Status.FAIL for step in report.pull)
    if report.ok:
        console.print(f"[green]all checks passed[/] ({len(report.names)} names"
                      f"{', pull ok' if report.image else ''})")
    else:
        pull = ", the pull failed" if pull_failed else ""
        console.print(f"[red]blocked[/]: {blocked} of {len(report.names)} names fail{pull}")


def render_json(report: Report, out: IO[str] | None = None) -> None:
    stream = out or sys.stdout
    stream.write(json.dumps(report.to_dict(), indent=2) + "\n")


class ProgressObserver(Observer):
    """A spinner with the names still being probed, on stderr."""

    def __init__(self) -> None:
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                  TimeElapsedColumn(),
                                  console=Console(stderr=True), transient=True)
        self._lock = threading.Lock()  # probes report from several threads
        self._running: list[str] = []
        self._done = 0
        self._total = 0
        self._main = self._progress.add_task("checking", total=None)

    def __enter__(self) -> ProgressObserver:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def _update(self) -> None:
        running = ", ".join(self._running) or "finishing"
        self._progress.update(self._main, description=(
            f"checked {self._done}/{self._total}: {running}"))

    def started(self, label: str) -> None:
        with self._lock:
            self._running.append(label)
            self._total += 1
            self._update()

    def finished(self, label: str) -> None:
        with self._lock:
            if label in self._running:
                self._running.remove(label)
            self._done += 1
            self._update()


def progress_wanted(as_json: bool) -> bool:
    return not as_json and sys.stderr.isatty()
