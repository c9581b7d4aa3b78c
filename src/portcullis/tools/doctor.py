"""`portcullis check`: which name is blocked, and where.

Every name a registry needs (from the catalog) and every host a real pull
touches (from `pull_probe`) gets the same four steps: DNS, connect (TCP, or
CONNECT through the proxy), TLS, `GET /v2/`. Names are probed concurrently in
threads; a pull that finds a new host (a token realm, a blob redirect) adds a
row for it while it runs. `diagnose` then turns each failure into one line
that names the name and the fix.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from portcullis import catalog
from portcullis.basics.hostport import format_hostport
from portcullis.catalog.model import ROLE_TAGS
from portcullis.tools.check_report import STEPS, NameReport, Report, Status, Step
from portcullis.tools.diagnose import diagnose
from portcullis.tools.netprobe import Problem, Route, connect_direct, connect_via_proxy, resolve
from portcullis.tools.pull_probe import ImageRef, PullProbe, parse_challenge
from portcullis.tools.tlsprobe import http_request, tls_handshake

EXPIRY_WARNING_DAYS = 14
WORKERS = 8


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    roles: tuple[str, ...]


def catalog_targets(registry: str, regions: Sequence[str], *, china: bool = False,
                    private: bool = False) -> tuple[list[Target], list[str]]:
    """The catalog's names for the regions, and the patterns that cannot be probed.

    Raises catalog.CatalogError on an unknown registry or region.
    """
    cat = catalog.load_catalog(registry)
    include = ["deprecated", "delivery"] + ["china"] * china + ["private"] * private
    entries = catalog.select(cat, regions=list(regions) or None, include=include)
    targets, patterns = [], []
    for entry in entries:
        if entry.name.startswith("*.") or entry.is_template:
            patterns.append(entry.name)  # no single host to connect to
            continue
        roles = tuple(t for t in entry.tags if t in ROLE_TAGS) or ("api",)
        targets.append(Target(entry.name, 443, roles))
    return targets, patterns


class Observer:
    """Progress callbacks; the default does nothing (no TTY, --json)."""

    def started(self, label: str) -> None:
        """A probe or pull step began."""

    def finished(self, label: str) -> None:
        """A probe or pull step ended."""


def _rest_skipped(report: NameReport) -> None:
    done = {s.step for s in report.steps}
    report.steps += [Step(name, Status.SKIP, "") for name in STEPS if name not in done]


def _http_step(route: Route, report: NameReport, tls: ssl.SSLSocket) -> Step:
    reply = http_request(route, tls, report.name, report.port, "GET", "/v2/", {}, 4096)
    challenge = reply.headers.get("WWW-Authenticate", "")
    scheme, params = parse_challenge(challenge)
    if "api" not in report.roles:
        # Token and blob hosts serve other paths; any HTTP answer proves the path works.
        return Step("http", Status.OK, f"{reply.status} (answers HTTP)", http_status=reply.status)
    if reply.status == 200:
        return Step("http", Status.OK, "200", http_status=200)
    if reply.status == 401 and scheme == "bearer" and params.get("realm"):
        return Step("http", Status.OK, f"401 Bearer {params['realm']}", http_status=401)
    if reply.status == 401 and scheme:
        return Step("http", Status.OK, f"401 {scheme.title()}", http_status=401)
    return Step("http", Status.FAIL, f"GET /v2/ answered {reply.status} {reply.reason}",
                http_status=reply.status)


def probe_name(route: Route, report: NameReport, warn_days: int = EXPIRY_WARNING_DAYS) -> None:
    """Run DNS, connect, TLS and HTTP for one name, filling `report.steps`."""
    name, port = report.name, report.port
    step = "dns"
    started = time.monotonic()

    def elapsed() -> float:
        return (time.monotonic() - started) * 1000

    proxy, report.bypass = route.proxy_for(name, port)
    report.via = "proxy" if proxy is not None else "direct"
    try:
        if proxy is not None:
            report.steps.append(Step("dns", Status.SKIP, "by the proxy"))
            step = "connect"
            sock = connect_via_proxy(route, name, port)
            report.steps.append(Step("connect", Status.OK, "CONNECT 200", ms=elapsed()))
        else:
            report.addresses = resolve(route, name, port)
            report.steps.append(Step("dns", Status.OK, ", ".join(report.addresses),
                                     ms=elapsed()))
            step, started = "connect", time.monotonic()
            sock, address = connect_direct(route, report.addresses, port)
            reached = format_hostport(address, port)
            report.steps.append(Step("connect", Status.OK, reached, ms=elapsed()))
        step, started = "tls", time.monotonic()
        tls, cert = tls_handshake(route, sock, name)
        report.cert = cert
        days = cert.days_left
        status = Status.WARN if days < warn_days else Status.OK
        report.steps.append(Step("tls", status, f"expires {cert.not_after:%Y-%m-%d} ({days} d)",
                                 ms=elapsed()))
        step, started = "http", time.monotonic()
        result = _http_step(route, report, tls)
        result.ms = elapsed()
        report.steps.append(result)
    except Problem as problem:
        report.steps.append(Step.failed(step, problem, elapsed()))
    _rest_skipped(report)


class Checker:
    """Probes names concurrently; each (name, port) once, whoever asks first."""

    def __init__(self, route: Route, observer: Observer | None = None,
                 workers: int = WORKERS) -> None:
        self.route = route
        self.observer = observer or Observer()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check")
        self._lock = threading.Lock()
        self._reports: dict[tuple[str, int], NameReport] = {}
        self._futures: list[Future[None]] = []

    def touch(self, name: str, port: int, role: str) -> None:
        key = (name, port)
        with self._lock:
            known = self._reports.get(key)
            if known is not None:
                if role not in known.roles:
                    known.roles.append(role)
                return
            report = self._reports[key] = NameReport(name, port, [role])
            self._futures.append(self._pool.submit(self._run, report))

    def add(self, target: Target) -> None:
        for role in target.roles:
            self.touch(target.name, target.port, role)

    def _run(self, report: NameReport) -> None:
        self.observer.started(report.label)
        try:
            probe_name(self.route, report)
        finally:
            self.observer.finished(report.label)

    def pull(self, image: ImageRef, credentials: tuple[str, str] | None) -> PullProbe:
        probe = PullProbe(self.route, image, self.touch, credentials)
        label = f"pull {image}"
        self.observer.started(label)
        try:
            probe.run()
        finally:
            self.observer.finished(label)
        return probe

    def wait(self) -> list[NameReport]:
        # Probes may add probes (never today, but cheap to allow): loop until none are new.
        seen = 0
        while True:
            with self._lock:
                pending = self._futures[seen:]
                seen = len(self._futures)
            if not pending:
                break
            for future in pending:
                future.result()
        self._pool.shutdown()
        return list(self._reports.values())


def run_check(route: Route, targets: Sequence[Target], image: ImageRef | None, *,
              credentials: tuple[str, str] | None = None,
              observer: Observer | None = None,
              patterns: Sequence[str] = ()) -> Report:
    checker = Checker(route, observer)
    if image is not None:
        checker.touch(image.host, image.port, "api")
    for target in targets:
        checker.add(target)
    pull = checker.pull(image, credentials).steps if image is not None else []
    names = checker.wait()
    report = Report(route.proxy.url if route.proxy else None, names,
                    str(image) if image else None, pull,
                    no_proxy=route.no_proxy.text if route.proxy else None)
    report.diagnoses = diagnose(report, patterns)
    return report

