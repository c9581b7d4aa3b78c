from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from portcullis.basics.vocabulary import Decision, Reason
from portcullis.observe.events import CloseEvent, DecisionEvent, new_connection_id
from portcullis.observe.log import MAX_STRING, DecisionLog

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def decision(**over: Any) -> DecisionEvent:
    base: dict[str, Any] = {
        "time": 1_700_000_000.25,
        "id": "abcd1234-1",
        "client": "10.240.0.7",
        "client_port": 51234,
        "mode": "explicit",
        "host": "us.icr.io",
        "port": 443,
        "sni": "us.icr.io",
        "rule": "ibm-registry",
        "decision": Decision.ALLOW,
        "reason": Reason.RULE_ALLOW,
        "resolved": ("192.0.2.10", "2001:db8::10"),
        "dialed": "192.0.2.10:443",
        "dns_ms": 1.23456,
        "connect_ms": 0.5,
        "original_dst": None,
    }
    base.update(over)
    return DecisionEvent(**base)


def lines_of(buf: io.StringIO) -> list[dict[str, Any]]:
    text = buf.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_decision_line_fields_and_order() -> None:
    buf = io.StringIO()
    DecisionLog(buf).decision(decision())
    [rec] = lines_of(buf)
    assert list(rec)[:3] == ["event", "time", "ts"]
    assert rec["event"] == "decision"
    assert rec["time"] == "2023-11-14T22:13:20.250Z"
    assert rec["ts"] == 1_700_000_000.25
    assert rec["decision"] == "allow"
    assert rec["reason"] == "rule_allow"
    assert rec["resolved"] == ["192.0.2.10", "2001:db8::10"]
    assert rec["dialed"] == "192.0.2.10:443"
    assert rec["dns_ms"] == 1.235
    assert rec["original_dst"] is None
    assert rec["client_port"] == 51234
    assert "truncated" not in rec


def test_deny_without_rule_logs_nulls() -> None:
    buf = io.StringIO()
    log = DecisionLog(buf)
    log.decision(
        decision(
            rule=None,
            decision=Decision.DENY,
            reason=Reason.NO_RULE,
            resolved=(),
            dialed=None,
            dns_ms=None,
            connect_ms=None,
        )
    )
    [rec] = lines_of(buf)
    assert rec["rule"] is None
    assert rec["decision"] == "deny"
    assert rec["reason"] == "no_rule"
    assert rec["resolved"] == []
    assert rec["dns_ms"] is None


def test_time_format_millisecond_rollover() -> None:
    buf = io.StringIO()
    log = DecisionLog(buf)
    # Same second twice (cached prefix), then the next second.
    for t in (1_700_000_000.001, 1_700_000_000.999, 1_700_000_001.0):
        log.decision(decision(time=t))
    times = [r["time"] for r in lines_of(buf)]
    assert all(RFC3339_MS.match(t) for t in times)
    assert times == [
        "2023-11-14T22:13:20.001Z",
        "2023-11-14T22:13:20.999Z",
        "2023-11-14T22:13:21.000Z",
    ]


HOSTILE = [
    'evil.com\n{"event":"decision","decision":"allow"}',
    "a\rb",
    "\x1b[31mred\x1b[0m.example",
    "b\u00fccher.example",
    "x\u2028y\u2029z",
    "nul\x00byte",
    'quote"back\\slash',
    "\ud800lone-surrogate",
]


@pytest.mark.parametrize("host", HOSTILE)
def test_hostile_host_and_sni_cannot_split_or_forge(host: str) -> None:
    buf = io.StringIO()
    DecisionLog(buf).decision(decision(host=host, sni=host))
    text = buf.getvalue()
    assert text.count("\n") == 1
    assert text.isascii()
    assert all(ch >= " " for ch in text[:-1]), "raw control character in output"
    [rec] = lines_of(buf)
    assert rec["host"] == host
    assert rec["sni"] == host
    assert rec["decision"] == "allow"


def test_long_strings_are_capped_and_flagged() -> None:
    buf = io.StringIO()
    long = "a" * 5000
    DecisionLog(buf).decision(decision(host=long, sni="b" * (MAX_STRING + 1)))
    [rec] = lines_of(buf)
    assert rec["host"] == "a" * MAX_STRING
    assert rec["sni"] == "b" * MAX_STRING
    assert rec["truncated"] == ["host", "sni"]


def test_exactly_max_is_not_truncated() -> None:
    buf = io.StringIO()
    DecisionLog(buf).decision(decision(host="h" * MAX_STRING))
    [rec] = lines_of(buf)
    assert len(rec["host"]) == MAX_STRING
    assert "truncated" not in rec


def test_close_event() -> None:
    buf = io.StringIO()
    log = DecisionLog(buf)
    log.close_event(
        CloseEvent(
            time=1_700_000_000.0,
            id="p-2",
            client="10.0.0.1",
            host="x\nforged",
            bytes_up=100,
            bytes_down=2**40,
            duration_s=1.5,
            close_reason="upstream_eof",
        )
    )
    [rec] = lines_of(buf)
    assert rec["event"] == "close"
    assert rec["host"] == "x\nforged"
    assert rec["bytes_down"] == 2**40
    assert rec["duration_s"] == 1.5
    assert rec["close_reason"] == "upstream_eof"


def test_info_and_error_lines_protect_envelope() -> None:
    buf = io.StringIO()
    log = DecisionLog(buf)
    log.log_info("listening", address="0.0.0.0:3128", event="forged", workers=2)
    log.log_error("reload failed", path=Path("/etc/p.yaml"), error="bad\nline")
    info, err = lines_of(buf)
    assert info["event"] == "info"
    assert info["msg"] == "listening"
    assert info["_event"] == "forged"
    assert info["workers"] == 2
    assert RFC3339_MS.match(info["time"])
    assert err["event"] == "error"
    assert err["path"] == "/etc/p.yaml"  # non-JSON values are stringified
    assert err["error"] == "bad\nline"


def test_one_write_per_line() -> None:
    class CountingStream(io.StringIO):
        writes = 0

        def write(self, s: str) -> int:
            self.writes += 1
            return super().write(s)

    stream = CountingStream()
    log = DecisionLog(stream)
    log.decision(decision(host="z" * 4000))
    log.log_info("x", a=1)
    assert stream.writes == 2


def test_closed_stream_drops_instead_of_raising() -> None:
    buf = io.StringIO()
    log = DecisionLog(buf)
    buf.close()
    log.decision(decision())
    log.log_error("still alive")
    assert log.dropped == 2


def test_stdout_default(capsys: pytest.CaptureFixture[str]) -> None:
    DecisionLog("-").log_info("hello")
    DecisionLog().log_info("world")
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(x)["msg"] for x in out] == ["hello", "world"]


def test_file_appends_and_reopens_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "decisions.log"
    path.write_text("existing\n")
    log = DecisionLog(path)
    log.decision(decision(id="one"))
    rotated = tmp_path / "decisions.log.1"
    os.rename(path, rotated)
    # Until reopen() the fd still points to the rotated file, as with logrotate.
    log.decision(decision(id="two"))
    log.reopen()
    log.decision(decision(id="three"))
    log.close()
    log.decision(decision(id="four"))
    old = rotated.read_text().splitlines()
    assert old[0] == "existing"
    assert [json.loads(x)["id"] for x in old[1:]] == ["one", "two"]
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["three"]
    assert log.dropped == 1


def test_reopen_failure_keeps_old_file(tmp_path: Path) -> None:
    d = tmp_path / "logs"
    d.mkdir()
    path = d / "p.log"
    log = DecisionLog(str(path))
    os.rename(path, tmp_path / "moved.log")
    d.rmdir()  # the path can no longer be created
    log.reopen()
    log.log_info("after")
    log.close()
    msgs = [json.loads(x)["msg"] for x in (tmp_path / "moved.log").read_text().splitlines()]
    assert msgs == ["log reopen failed", "after"]


def test_forked_writers_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "shared.log"
    procs, per = 4, 300
    pids = []
    for n in range(procs):
        pid = os.fork()
        if pid == 0:  # child
            try:
                log = DecisionLog(path)
                for i in range(per):
                    log.decision(decision(id=f"{n}-{i}", host=f"{n}" * 500))
                log.close()
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(recs) == procs * per
    assert all(r["host"] == r["id"].split("-")[0] * 500 for r in recs)


def test_connection_ids_unique_and_short() -> None:
    ids = [new_connection_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert max(len(i) for i in ids) <= 12
    assert len({i.split("-")[0] for i in ids}) == 1


def test_connection_ids_count_up_in_base_36() -> None:
    # The text of all but the last digit is kept between ids: it must change
    # exactly when the count carries into it.
    numbers = [int(new_connection_id().split("-")[1], 36) for _ in range(5000)]
    assert numbers == list(range(numbers[0], numbers[0] + 5000))


def test_connection_id_prefix_changes_after_fork() -> None:
    parent = new_connection_id()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, new_connection_id().encode())
        finally:
            os._exit(0)
    os.close(w)
    child = os.read(r, 100).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert child and child.split("-")[0] != parent.split("-")[0]
    assert child.endswith("-1")
