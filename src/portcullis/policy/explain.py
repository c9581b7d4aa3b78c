"""Explain a decision: which rule decides, and why each earlier rule did not.

This is the slow path (a scan of the rules in order) kept beside the engine's
fast path; a test checks that both always reach the same verdict.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from portcullis.basics.hostport import format_hostport
from portcullis.basics.ip import IPAddress, parse_network
from portcullis.basics.names import parse_pattern
from portcullis.policy.engine import CompiledRule, Engine, Verdict


@dataclass(frozen=True, slots=True)
class RuleTrace:
    rule: str
    source_ok: bool
    matched_destination: str | None
    port_ok: bool

    @property
    def matches(self) -> bool:
        return self.source_ok and self.matched_destination is not None and self.port_ok

    def describe(self, rule: CompiledRule, host: str, port: int) -> str:
        if not self.source_ok:
            wanted = ", ".join(sorted(rule.groups))
            return f"source: client is not in {wanted}"
        if self.matched_destination is None:
            count = len(rule.destinations)
            return f"destination: {host} matches none of its {count} destination(s)"
        if not self.port_ok:
            ports = ", ".join(str(p) for p in sorted(rule.ports))
            return f"port: {port} is not among {ports}"
        return f"matches: {host} by {self.matched_destination}, port {port}"


@dataclass(slots=True)
class Explanation:
    client: str
    host: str
    port: int
    groups: list[str]
    verdict: Verdict
    traces: list[tuple[CompiledRule, RuleTrace, str]]
    # Filled by the proxy layer: the resolution and a verdict per address.
    resolution: dict[str, Any] | None = field(default=None)
    # The parent proxy the connection would be chained to (upstream_proxy), if any.
    parent: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "client": self.client,
            "host": self.host,
            "port": self.port,
            "source_groups": self.groups,
            "decision": self.verdict.decision.value,
            "reason": self.verdict.reason.value,
            "rule": self.verdict.rule_name,
            "rules": [
                {"rule": rule.name, "action": rule.action.value, "matches": trace.matches,
                 "why": text}
                for rule, trace, text in self.traces
            ],
        }
        if self.resolution is not None:
            out["resolution"] = self.resolution
        if self.parent is not None:
            out["parent"] = self.parent
        return out

    def to_text(self) -> str:
        groups = ", ".join(self.groups) or "none (source_unknown)"
        lines = [
            f"client   {self.client}  (groups: {groups})",
            f"target   {format_hostport(self.host, self.port)}",
        ]
        for rule, trace, text in self.traces:
            mark = "=>" if trace.matches else "  "
            lines.append(f"{mark} rule {rule.name!r} ({rule.action.value}): {text}")
        if self.resolution is not None:
            lines.extend(_resolution_lines(self.resolution))
        if self.parent is not None:
            lines.append(f"via      parent proxy {self.parent}: CONNECT "
                         f"{format_hostport(self.host, self.port)} through it; the parent"
                         " resolves and dials the name")
        rule_text = f" by rule {self.verdict.rule_name!r}" if self.verdict.rule else ""
        lines.append(
            f"decision {self.verdict.decision.value.upper()}{rule_text}"
            f" (reason: {self.verdict.reason.value})"
        )
        return "\n".join(lines)


def _resolution_lines(resolution: dict[str, Any]) -> list[str]:
    if "error" in resolution:
        return [f"resolve  {resolution['error']}"]
    lines = [f"resolve  {resolution.get('source', 'dns')}: {', '.join(resolution['addresses'])}"]
    for check in resolution.get("checks", []):
        mark = "ok  " if check["allowed"] else "DENY"
        lines.append(f"  {mark} {check['address']}: {check['why']}")
    return lines


def _matching_destination(rule: CompiledRule, host: str, is_ip: bool) -> str | None:
    for dest in rule.destinations:
        if "/" in dest:
            if is_ip and ipaddress.ip_address(host) in parse_network(dest):
                return dest
        elif not is_ip and parse_pattern(dest).matches(host):
            return dest
    return None


def explain(
    engine: Engine, client: IPAddress, host: str, port: int, *, is_ip: bool = False,
    identity: str | None = None,
) -> Explanation:
    groups = engine.groups_of(client, identity)
    verdict = engine.decide(client, host, port, is_ip=is_ip, identity=identity)
    traces: list[tuple[CompiledRule, RuleTrace, str]] = []
    if groups:
        for rule in engine.rules:
            trace = RuleTrace(
                rule=rule.name,
                source_ok=not rule.groups.isdisjoint(groups),
                matched_destination=_matching_destination(rule, host, is_ip),
                port_ok=port in rule.ports,
            )
            traces.append((rule, trace, trace.describe(rule, host, port)))
            if trace.matches:
                break
    return Explanation(
        client=str(client),
        host=host,
        port=port,
        groups=sorted(groups),
        verdict=verdict,
        traces=traces,
    )
