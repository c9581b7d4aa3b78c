"""Prometheus metrics, with label values taken from the same enums as the log.

Each Metrics owns its registry (never the process-global one) so that tests and
embedders can run several side by side. Label children are resolved once and
cached: `labels()` builds a tuple, takes a lock and hashes on every call, which
the per-connection path should not pay.

The per-connection updates (decisions, bytes, open connections, the DNS and
connect latencies) are tallied in plain Python values and handed to
prometheus_client in one batch (`flush`): at every scrape, and FLUSH_DELAY
after the first update of a batch. Each prometheus_client update takes a
lock and several calls, about 7 % of a connection's instructions when made
one by one (bench/RESULTS.md).

With `--workers N` every worker keeps its values in memory-mapped files in one
directory (prometheus_client's multiprocess mode), and a scrape, whichever
worker takes it, reads all of them: the totals are the process group's, the
other workers' at most FLUSH_DELAY old.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
    multiprocess,
    values,
)

from portcullis import __version__
from portcullis.basics.vocabulary import Decision, Mode, Reason
from portcullis.observe.events import CloseEvent, DecisionEvent

# Resolution and dialing on a LAN take well under a millisecond; a DNS timeout
# or a SYN retry takes seconds. 0.5 ms .. 10 s covers both ends.
LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

CONNECT_ERROR_KINDS: Final = ("refused", "timeout", "unreachable", "reset", "other")

# Seconds a batch of per-connection updates waits before it is flushed.
FLUSH_DELAY: Final = 0.1


class _PendingHistogram:
    """Observations not yet flushed: a count per bucket (the last one for +Inf) and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # Buckets are upper bounds, inclusive: the first bound >= value.
        self.counts[bisect_left(LATENCY_BUCKETS, value)] += 1
        self.total += value

    def flush_into(self, histogram: Histogram) -> None:
        if not any(self.counts):
            return
        # prometheus_client has no call that adds many observations at once;
        # its buckets are per-bucket (not cumulative) values, as observe()
        # leaves them. tests/unit/test_metrics.py compares the exposition with
        # one made by observe().
        for index, count in enumerate(self.counts):
            if count:
                histogram._buckets[index].inc(count)
        histogram._sum.inc(self.total)
        self.counts = [0] * len(self.counts)
        self.total = 0.0


class Metrics:
    def __init__(self, version: str = __version__, *, shared_dir: str | None = None) -> None:
        """`shared_dir`: the directory the workers of one `serve --workers N` share."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.shared_dir = shared_dir
        if shared_dir is not None:
            # Process-wide, and only in a worker: its values go to mmapped files
            # in the directory prometheus_client finds in the environment.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared_dir
            values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        self._decisions = Counter(
            "portcullis_decisions",
            "Decisions taken, by decision, reason and deciding rule ('' for none).",
            ["decision", "reason", "rule"],
            registry=r,
        )
        self._active = Gauge(
            "portcullis_active_connections",
            "Client connections currently open, by listener mode.",
            ["mode"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self._bytes = Counter(
            "portcullis_bytes",
            "Bytes relayed; up is client to upstream, down is upstream to client.",
            ["direction"],
            registry=r,
        )
        self._dns = Histogram(
            "portcullis_dns_seconds",
            "Time to resolve a requested name.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._connect = Histogram(
            "portcullis_upstream_connect_seconds",
            "Time to establish the TCP connection to the upstream address.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._connect_errors = Counter(
            "portcullis_connect_errors",
            "Failed upstream connection attempts, by kind.",
            ["kind"],
            registry=r,
        )
        self._reloads = Counter(
            "portcullis_policy_reloads",
            "Policy reload attempts, by result.",
            ["result"],
            registry=r,
        )
        self._rules = Gauge(
            "portcullis_policy_rules",
            "Rules in the policy currently in force.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self._inspected = Counter(
            "portcullis_inspected_requests",
            "Requests judged inside inspected connections, by registry name, decision"
            " and reason.",
            ["registry", "decision", "reason"],
            registry=r,
        )
        self._quota_refusals = Counter(
            "portcullis_quota_refusals",
            "Connections refused by a group's quota, by group and limit (rate: 429,"
            " tunnels: 503).",
            ["group", "limit"],
            registry=r,
        )
        self._logins = Counter(
            "portcullis_logins",
            "Proxy-Authorization logins, by result: cached (a verified login seen"
            " again), hashed (verified by running the hash), failed.",
            ["result"],
            registry=r,
        )
        self._info = Info("portcullis", "Portcullis build information.", registry=r)
        self._info.info({"version": version})
        if shared_dir is not None:
            # Every worker's files, read at each scrape (the collector globs them
            # then); the build info is the same in all. Without auto_describe,
            # registering does not read them all once more.
            self._merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(self._merged, path=shared_dir)  # type: ignore[no-untyped-call]
            self._merged.register(self._info)

        # Pre-resolved children. Every known series is created up front, so a
        # scrape shows zeros instead of absent series (rate() needs a start).
        self._decision_children: dict[tuple[str, str, str], Counter] = {}
        self._active_children = {m: self._active.labels(mode=m) for m in Mode}
        self._bytes_up = self._bytes.labels(direction="up")
        self._bytes_down = self._bytes.labels(direction="down")
        self._error_children = {k: self._connect_errors.labels(kind=k) for k in CONNECT_ERROR_KINDS}
        self._reload_ok = self._reloads.labels(result="ok")
        self._reload_error = self._reloads.labels(result="error")

        # The tally since the last flush; open connections are absolute, per process.
        self._pending_decisions: dict[tuple[Decision, Reason, str], int] = {}
        self._pending_up = 0
        self._pending_down = 0
        self._open = dict.fromkeys(Mode, 0)
        self._pending_dns = _PendingHistogram()
        self._pending_connect = _PendingHistogram()
        self._flush_due = False

    def _decision_child(self, decision: Decision, reason: Reason, rule: str) -> Counter:
        key = (decision.value, reason.value, rule)
        child = self._decision_children.get(key)
        if child is None:
            # The rule label is bounded by the policy's rule names, so the
            # cache is bounded too.
            child = self._decision_children[key] = self._decisions.labels(*key)
        return child

    def _tallied(self) -> None:
        """Something is in the tally: make sure a flush follows within FLUSH_DELAY."""
        self._flush_due = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a tool, a test): render() flushes
        loop.call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        """Hand the tally to prometheus_client (a scrape does it first)."""
        self._flush_due = False
        pending, self._pending_decisions = self._pending_decisions, {}
        for (decision, reason, rule), count in pending.items():
            self._decision_child(decision, reason, rule).inc(count)
        if self._pending_up:
            self._bytes_up.inc(self._pending_up)
            self._pending_up = 0
        if self._pending_down:
            self._bytes_down.inc(self._pending_down)
            self._pending_down = 0
        for mode, count in self._open.items():
            self._active_children[mode].set(count)
        self._pending_dns.flush_into(self._dns)
        self._pending_connect.flush_into(self._connect)

    def record_decision(self, ev: DecisionEvent) -> None:
        """Count a decision. Timings are observed by observe_dns/observe_connect,
        not from the event, so that a caller using both never counts twice."""
        key = (ev.decision, ev.reason, ev.rule or "")
        pending = self._pending_decisions
        pending[key] = pending.get(key, 0) + 1
        if not self._flush_due:
            self._tallied()

    def record_inspected(self, registry: str, decision: Decision, reason: Reason) -> None:
        # The registry label is bounded by the names inspecting rules allow.
        self._inspected.labels(registry, decision.value, reason.value).inc()

    def record_close(self, ev: CloseEvent) -> None:
        self._pending_up += ev.bytes_up
        self._pending_down += ev.bytes_down
        if not self._flush_due:
            self._tallied()

    def connection_opened(self, mode: Mode) -> None:
        self._open[mode] += 1
        if not self._flush_due:
            self._tallied()

    def connection_closed(self, mode: Mode) -> None:
        self._open[mode] -= 1
        if not self._flush_due:
            self._tallied()

    def observe_dns(self, seconds: float) -> None:
        self._pending_dns.observe(seconds)
        if not self._flush_due:
            self._tallied()

    def observe_connect(self, seconds: float) -> None:
        self._pending_connect.observe(seconds)
        if not self._flush_due:
            self._tallied()

    def connect_error(self, kind: str) -> None:
        # Unknown kinds fold into "other" so a caller's typo or a new errno
        # cannot grow the label set.
        child = self._error_children.get(kind) or self._error_children["other"]
        child.inc()

    def quota_refused(self, group: str, limit: str) -> None:
        # Groups are the policy's names, so the label set stays bounded.
        self._quota_refusals.labels(group=group, limit=limit).inc()

    def login(self, result: str) -> None:
        self._logins.labels(result=result).inc()

    def reload(self, ok: bool) -> None:
        (self._reload_ok if ok else self._reload_error).inc()

    def set_policy_rules(self, count: int) -> None:
        self._rules.set(count)

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its Content-Type."""
        self.flush()
        if self.shared_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        return generate_latest(self._merged), CONTENT_TYPE_LATEST


def worker_gone(pid: int, shared_dir: str) -> None:
    """A worker of the group exited: its live gauges stop counting, its counters stay."""
    multiprocess.mark_process_dead(pid, shared_dir)  # type: ignore[no-untyped-call]
