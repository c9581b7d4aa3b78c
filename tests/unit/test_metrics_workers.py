"""Metrics that add up across `serve --workers N`: each worker counts into the
shared directory and a scrape, in whichever worker, shows the group's totals.

Run in fresh interpreters: multiprocess mode changes prometheus_client's value
class for the whole process, which must not leak into the other tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

WORKER = """
import os, sys
from portcullis.basics.vocabulary import CloseReason, Decision, Mode, Reason
from portcullis.observe.events import CloseEvent, DecisionEvent
from portcullis.observe.metrics import Metrics, worker_gone

shared, count, role = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if role == "workers":
    pids = []
    for index in range(2):
        pid = os.fork()
        if pid == 0:
            m = Metrics(shared_dir=shared)
            for i in range(count * (index + 1)):
                m.record_decision(DecisionEvent(
                    time=0.0, id=str(i), client="10.0.0.1", client_port=1,
                    mode=Mode.EXPLICIT, host="us.icr.io", port=443, sni=None, rule="r",
                    decision=Decision.ALLOW, reason=Reason.RULE_ALLOW))
                m.record_close(CloseEvent(time=0.0, id=str(i), client="10.0.0.1",
                    host="us.icr.io", bytes_up=10, bytes_down=100, duration_s=0.1,
                    close_reason=CloseReason.DONE))
            m.connection_opened(Mode.EXPLICIT)  # still open when the worker exits
            m.flush()  # what a worker's drain does before it exits
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    if count == 7:  # the parent's duty once a worker is gone
        for pid in pids:
            worker_gone(pid, shared)
else:
    body, _ = Metrics(shared_dir=shared).render()
    sys.stdout.write(body.decode())
"""


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, "-c", WORKER, *args], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in the scrape:\n{text}")


def test_a_scrape_in_any_worker_shows_the_group_totals(tmp_path: Path) -> None:
    _run(str(tmp_path), "5", "workers")  # 5 + 10 decisions in two workers
    text = _run(str(tmp_path), "0", "scrape")
    decisions = 'portcullis_decisions_total{decision="allow",reason="rule_allow",rule="r"}'
    assert _value(text, decisions) == 15
    assert _value(text, 'portcullis_bytes_total{direction="down"}') == 1500
    assert 'portcullis_info{version="' in text


def test_a_gone_worker_keeps_its_counts_but_not_its_open_connections(tmp_path: Path) -> None:
    _run(str(tmp_path), "7", "workers")
    text = _run(str(tmp_path), "0", "scrape")
    decisions = 'portcullis_decisions_total{decision="allow",reason="rule_allow",rule="r"}'
    assert _value(text, decisions) == 21
    assert _value(text, 'portcullis_active_connections{mode="explicit"}') == 0
