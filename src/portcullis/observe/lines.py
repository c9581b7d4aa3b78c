"""The decision and close lines, written straight into one string.

These two lines are written for every connection, so they skip the dict and the
JSON encoder: each string field goes through the C `encode_basestring_ascii`
(the escaping json.dumps(ensure_ascii=True) does, so a client-supplied name
still cannot split a line or drive a terminal) and the rest are numbers the
format writes as json would. The output is byte for byte what encoding the
record as a dict gave (tests/unit/test_log_lines.py compares the two).
"""

from __future__ import annotations

from json.encoder import encode_basestring_ascii as _quote

from portcullis.observe.events import CloseEvent, DecisionEvent

# Longer client strings are cut so that one request cannot make a huge line; the
# cut is flagged in "truncated" so a reader knows the value is not the whole name.
MAX_STRING = 512


def cap(value: str | None, name: str, cut: list[str]) -> str | None:
    if value is not None and len(value) > MAX_STRING:
        cut.append(name)
        return value[:MAX_STRING]
    return value


def _text(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def _fixed(value: float, digits: int) -> str:
    """`value` rounded to `digits` decimals, written as repr(round(value, digits))
    writes it: round() and repr() each convert the float to decimal, where one
    format(value, ".nf") does (it rounds the same way, half-even on the exact binary value)."""
    # Below 1e-4 repr writes an exponent; above the limit a double has fewer
    # than `digits` exact decimals and repr writes fewer.
    if 1e-4 <= value < _LIMITS[digits]:
        text = format(value, _FORMATS[digits]).rstrip("0")
        return text + "0" if text[-1] == "." else text
    return repr(round(float(value), digits))


_LIMITS = {3: 2**52 / 1e3, 6: 2**52 / 1e6}
_FORMATS = {3: ".3f", 6: ".6f"}


def _ms(value: float | None) -> str:
    return "null" if value is None else _fixed(value, 3)


def _truncated(cut: list[str]) -> str:
    return ',"truncated":[' + ",".join(map(_quote, cut)) + "]" if cut else ""


def decision_line(ev: DecisionEvent, stamp: str) -> str:
    """The decision record as one JSON line; `stamp` is the RFC 3339 time of ev.time."""
    cut: list[str] = []
    host = cap(ev.host, "host", cut)
    sni = cap(ev.sni, "sni", cut)
    rule = cap(ev.rule, "rule", cut)
    identity = cap(ev.identity, "identity", cut)
    resolved = ",".join(map(_quote, ev.resolved))
    return (
        f'{{"event":"decision","time":"{stamp}","ts":{_fixed(ev.time, 6)},'
        f'"id":{_quote(ev.id)},"client":{_quote(ev.client)},"client_port":{ev.client_port},'
        f'"mode":{_quote(ev.mode)},"host":{_text(host)},"port":{ev.port},'
        f'"sni":{_text(sni)},"rule":{_text(rule)},"decision":{_quote(ev.decision)},'
        f'"reason":{_quote(ev.reason)},"resolved":[{resolved}],'
        f'"dialed":{_text(ev.dialed)},"dns_ms":{_ms(ev.dns_ms)},'
        f'"connect_ms":{_ms(ev.connect_ms)},"original_dst":{_text(ev.original_dst)}'
        f"{_optional(ev, identity)}{_truncated(cut)}}}\n"
    )


def _optional(ev: DecisionEvent, identity: str | None) -> str:
    # Only where they apply, so the lines of connections without them stay as they were.
    out = "" if identity is None else f',"identity":{_quote(identity)}'
    if ev.parent is not None:
        status = "null" if ev.parent_status is None else str(ev.parent_status)
        out += f',"parent":{_quote(ev.parent)},"parent_status":{status}'
    if ev.balancer is not None:
        out += f',"balancer":{_quote(ev.balancer)}'
    return out


def close_line(ev: CloseEvent, stamp: str) -> str:
    """The close record as one JSON line."""
    cut: list[str] = []
    host = cap(ev.host, "host", cut)
    reason = cap(ev.close_reason, "close_reason", cut)
    return (
        f'{{"event":"close","time":"{stamp}","ts":{_fixed(ev.time, 6)},'
        f'"id":{_quote(ev.id)},"client":{_quote(ev.client)},"host":{_text(host)},'
        f'"bytes_up":{ev.bytes_up},"bytes_down":{ev.bytes_down},'
        f'"duration_s":{_fixed(ev.duration_s, 6)},"close_reason":{_text(reason)}'
        f"{_truncated(cut)}}}\n"
    )
