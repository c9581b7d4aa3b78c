"""Process start-up for `portcullis serve`: one process, or N workers sharing the
listen ports with SO_REUSEPORT (the kernel spreads new connections over them)."""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import signal
import sys
import tempfile

from portcullis.basics.errors import ConfigError
from portcullis.basics.hostport import format_hostport, parse_hostport
from portcullis.config import Policy
from portcullis.observe.log import DecisionLog
from portcullis.observe.metrics import worker_gone
from portcullis.observe.summary import policy_summary
from portcullis.proxy.loop import run
from portcullis.proxy.server import Server

GC_YOUNG_THRESHOLD = 20_000


def _serve_one(policy: Policy, path: str | None, log_path: str | None, use_uvloop: bool,
               announce: bool, shared: str | None = None) -> int:
    """One process serving; `shared`: the metrics directory of a worker's group
    (workers also share the listen ports)."""
    log = DecisionLog(log_path or policy.log.path)

    async def main() -> None:
        server = Server(policy, policy_path=path, log=log, reuse_port=shared is not None,
                        metrics_dir=shared)
        await server.start()
        # The policy, the compiled engine and the modules live as long as the
        # process: out of the collector's sight, full collections stop walking
        # them (a cost that grows with the policy) while connections churn.
        gc.freeze()
        # A connection's objects are freed by reference counting when it ends;
        # a young-generation collection only walks what is alive then, the
        # connections in flight. Collecting every 700 allocations (the
        # default) walked them two or three times per connection
        # (bench/RESULTS.md); every GC_YOUNG_THRESHOLD allocations walks the
        # same objects about as often per collection, far fewer times in all.
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        listening = {mode.value: format_hostport(*server.bound(mode)) for mode in server.listeners}
        if server.admin is not None and policy.listen.admin is not None:
            host, _ = parse_hostport(policy.listen.admin)
            listening["admin"] = format_hostport(host, server.admin.bound_port)
        log.log_info("listening", pid=os.getpid(), **listening)
        if announce:
            print(policy_summary(policy, server.state.gate.engine, listening), file=sys.stderr)
        await server.wait_stopped()

    try:
        run(main(), use_uvloop=use_uvloop)
    except ConfigError as exc:  # a listen address, a certificate, a password file
        log.log_error(str(exc))
        print(f"portcullis: {exc}", file=sys.stderr)
        return 2
    return 0


def serve_forever(policy: Policy, path: str | None, *, log_path: str | None, workers: int,
                  use_uvloop: bool) -> int:
    if workers == 1:
        return _serve_one(policy, path, log_path, use_uvloop, True)
    # The workers' metric values, summed at every scrape (observe/metrics.py).
    shared = tempfile.mkdtemp(prefix="portcullis-metrics-")
    try:
        return _fork_workers(policy, path, log_path, workers, use_uvloop, shared)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def _fork_workers(policy: Policy, path: str | None, log_path: str | None, workers: int,
                  use_uvloop: bool, shared: str) -> int:
    # Frozen objects are never touched by the collector, so the pages the
    # workers inherit stay shared instead of being copied on the first collection.
    gc.freeze()
    children: list[int] = []
    for index in range(workers):
        pid = os.fork()
        if pid == 0:
            code = _serve_one(policy, path, log_path, use_uvloop, index == 0, shared)
            os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    status = 0
    for child in children:
        _, code = os.waitpid(child, 0)
        status = status or os.waitstatus_to_exitcode(code)
        # Its live gauges (open connections) no longer count; its counters do.
        worker_gone(child, shared)
    if status in (0, -signal.SIGTERM, -signal.SIGINT):
        return 0
    return 2 if status == 2 else 1
