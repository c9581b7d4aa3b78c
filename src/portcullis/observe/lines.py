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


def _truncated(cut: list[str]) -> str:
    return ',"truncated":[' + ",".join(map(_quote, cut)) + "]" if cut else ""


def decision_line(ev: DecisionEvent, stamp: str) -> str:
    """The decision record as one JSON line; `stamp` is the RFC 3339 time of ev.time."""
    # Written out rather than through cap/_text/_ms per field: two lines per
    # connection, and each Python call costs more than the check it wraps.
    host, sni, rule, identity = ev.host, ev.sni, ev.rule, ev.identity
    tail = ""
    if max(len(host or ""), len(sni or ""), len(rule or ""), len(identity or "")) > MAX_STRING:
        cut: list[str] = []
        host = cap(host, "host", cut)
        sni = cap(sni, "sni", cut)
        rule = cap(rule, "rule", cut)
        identity = cap(identity, "identity", cut)
        tail = _truncated(cut)
    if identity is not None or ev.parent is not None or ev.balancer is not None:
        tail = _optional(ev, identity) + tail
    resolved = ",".join(map(_quote, ev.resolved))
    dialed, dns_ms, connect_ms, original_dst = ev.dialed, ev.dns_ms, ev.connect_ms, ev.original_dst
    return (
        f'{{"event":"decision","time":"{stamp}","ts":{_fixed(ev.time, 6)},'
        f'"id":{_quote(ev.id)},"client":{_quote(ev.client)},"client_port":{ev.client_port},'
        f'"mode":{_quote(ev.mode)},"host":{"null" if host is None else _quote(host)},'
        f'"port":{ev.port},"sni":{"null" if sni is None else _quote(sni)},'
        f'"rule":{"null" if rule is None else _quote(rule)},"decision":{_quote(ev.decision)},'
        f'"reason":{_quote(ev.reason)},"resolved":[{resolved}],'
        f'"dialed":{"null" if dialed is None else _quote(dialed)},'
        f'"dns_ms":{"null" if dns_ms is None else _fixed(dns_ms, 3)},'
        f'"connect_ms":{"null" if connect_ms is None else _fixed(connect_ms, 3)},'
        f'"original_dst":{"null" if original_dst is None else _quote(original_dst)}'
        f"{tail}}}\n"
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
    host: str | None = ev.host
    reason: str | None = ev.close_reason
    tail = ""
    if max(len(host or ""), len(reason or "")) > MAX_STRING:
        cut: list[str] = []
        host = cap(host, "host", cut)
        reason = cap(reason, "close_reason", cut)
        tail = _truncated(cut)
    return (
        f'{{"event":"close","time":"{stamp}","ts":{_fixed(ev.time, 6)},'
        f'"id":{_quote(ev.id)},"client":{_quote(ev.client)},'
        f'"host":{"null" if host is None else _quote(host)},'
        f'"bytes_up":{ev.bytes_up},"bytes_down":{ev.bytes_down},'
        f'"duration_s":{_fixed(ev.duration_s, 6)},'
        f'"close_reason":{"null" if reason is None else _quote(reason)}'
        f"{tail}}}\n"
    )
