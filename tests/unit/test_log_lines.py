"""The decision and close lines (observe/lines.py) against the record encoded
as a dict with json, the way they were written before: same bytes for every
event, hostile strings included."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portcullis.basics.vocabulary import CloseReason, Decision, Mode, Reason
from portcullis.observe.events import CloseEvent, DecisionEvent
from portcullis.observe.lines import MAX_STRING, _fixed, close_line, decision_line

_encode = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=str).encode
STAMP = "2023-11-14T22:13:20.250Z"


def _cap(value: str | None, name: str, cut: list[str]) -> str | None:
    if value is not None and len(value) > MAX_STRING:
        cut.append(name)
        return value[:MAX_STRING]
    return value


@pytest.mark.parametrize("value", [0.0, 0.00004, 0.0004, 0.0005, 0.0015, 0.0025, 0.1234567, 1.5,
                                   12.0, 99.9999, 1234.5678901, 2.0000005, 1_700_000_000.123456789,
                                   1_700_000_000.5, 1_700_000_000.0000005, 1e15, -0.25])
@pytest.mark.parametrize("digits", [3, 6])
def test_numbers_are_written_as_repr_of_round_writes_them(value: float, digits: int) -> None:
    assert _fixed(value, digits) == repr(round(value, digits))


@given(st.floats(min_value=0, max_value=1e16, allow_nan=False), st.sampled_from([3, 6]))
def test_any_duration_or_time_is_written_as_repr_of_round_writes_it(value: float,
                                                                   digits: int) -> None:
    assert _fixed(value, digits) == repr(round(value, digits))


def reference_decision(ev: DecisionEvent) -> str:
    cut: list[str] = []
    rec: dict[str, Any] = {"event": "decision", "time": STAMP, "ts": round(ev.time, 6),
                           "id": ev.id, "client": ev.client, "client_port": ev.client_port,
                           "mode": ev.mode, "host": _cap(ev.host, "host", cut), "port": ev.port,
                           "sni": _cap(ev.sni, "sni", cut), "rule": _cap(ev.rule, "rule", cut),
                           "decision": ev.decision.value, "reason": ev.reason.value,
                           "resolved": list(ev.resolved), "dialed": ev.dialed,
                           "dns_ms": None if ev.dns_ms is None else round(ev.dns_ms, 3),
                           "connect_ms": None if ev.connect_ms is None else round(ev.connect_ms, 3),
                           "original_dst": ev.original_dst}
    if ev.identity is not None:
        rec["identity"] = _cap(ev.identity, "identity", cut)
    if ev.parent is not None:
        rec["parent"] = ev.parent
        rec["parent_status"] = ev.parent_status
    if ev.balancer is not None:
        rec["balancer"] = ev.balancer
    if cut:
        rec["truncated"] = cut
    return _encode(rec) + "\n"


def reference_close(ev: CloseEvent) -> str:
    cut: list[str] = []
    rec: dict[str, Any] = {"event": "close", "time": STAMP, "ts": round(ev.time, 6), "id": ev.id,
                           "client": ev.client, "host": _cap(ev.host, "host", cut),
                           "bytes_up": ev.bytes_up, "bytes_down": ev.bytes_down,
                           "duration_s": round(ev.duration_s, 6),
                           "close_reason": _cap(ev.close_reason, "close_reason", cut)}
    if cut:
        rec["truncated"] = cut
    return _encode(rec) + "\n"


HOSTILE = ["us.icr.io", "a\nb", '"}{"forged":1', "\x1b[31mred", "bücher.example", "\u2028x",
           "x" * (MAX_STRING + 3), "\\", ""]


@pytest.mark.parametrize("text", HOSTILE)
def test_decision_line_is_the_dict_encoding(text: str) -> None:
    ev = DecisionEvent(time=1_700_000_000.123456789, id="ab-1", client="10.0.0.1",
                       client_port=4242, mode=Mode.EXPLICIT, host=text, port=443, sni=text,
                       rule=text, decision=Decision.REPORT, reason=Reason.SNI_MISMATCH,
                       resolved=("192.0.2.1", "2001:db8::1"), dialed="192.0.2.1:443",
                       dns_ms=0.1234567, connect_ms=12.0, original_dst="192.0.2.9:443")
    line = decision_line(ev, STAMP)
    assert line == reference_decision(ev)
    assert line.count("\n") == 1 and line.isascii()


@pytest.mark.parametrize("field", ["host", "sni", "rule", "identity"])
def test_one_long_field_is_cut_alone(field: str) -> None:
    fields: dict[str, Any] = {"host": "us.icr.io", "sni": "us.icr.io", "rule": "r",
                              "identity": "ci"}
    fields[field] = "y" * (MAX_STRING + 1)
    ev = DecisionEvent(time=1_700_000_000.25, id="ab-4", client="10.0.0.1", client_port=2,
                       mode=Mode.EXPLICIT, port=443, decision=Decision.ALLOW,
                       reason=Reason.RULE_ALLOW, **fields)
    line = decision_line(ev, STAMP)
    assert line == reference_decision(ev)
    assert f'"truncated":["{field}"]' in line


@pytest.mark.parametrize("text", HOSTILE)
@pytest.mark.parametrize("parent_status", [None, 407])
def test_decision_line_with_identity_parent_and_balancer(text: str,
                                                         parent_status: int | None) -> None:
    ev = DecisionEvent(time=1_700_000_000.5, id="ab-3", client="10.0.0.1", client_port=1,
                       mode=Mode.EXPLICIT_TLS, host="us.icr.io", port=443, sni=None,
                       rule="r", decision=Decision.DENY, reason=Reason.PARENT_REFUSED,
                       identity=text, parent="http://10.0.0.2:3128",
                       parent_status=parent_status, balancer="10.0.0.9:40000")
    line = decision_line(ev, STAMP)
    assert line == reference_decision(ev)
    record = json.loads(line)
    assert (record["parent_status"], record["balancer"]) == (parent_status, "10.0.0.9:40000")


def test_decision_line_with_nothing_known() -> None:
    ev = DecisionEvent(time=1_700_000_000.0, id="ab-2", client="::1", client_port=1,
                       mode=Mode.TRANSPARENT, host=None, port=0, sni=None, rule=None,
                       decision=Decision.DENY, reason=Reason.BAD_REQUEST)
    line = decision_line(ev, STAMP)
    assert line == reference_decision(ev)
    assert json.loads(line)["resolved"] == []


@pytest.mark.parametrize("text", HOSTILE)
def test_close_line_is_the_dict_encoding(text: str) -> None:
    ev = CloseEvent(time=1_700_000_001.5, id="ab-1", client="10.0.0.1", host=text,
                    bytes_up=517, bytes_down=1 << 40, duration_s=0.0123456789,
                    close_reason=CloseReason.UPSTREAM_RESET)
    line = close_line(ev, STAMP)
    assert line == reference_close(ev)
    assert json.loads(line)["close_reason"] == "upstream_reset"
