"""`portcullis learn`: a minimal policy from decision logs written in report mode.

Every connection the logs show as let through (allowed, or reported in report
mode) becomes allowed, and nothing else: clients collapse into CIDRs, clients
that reached the same things share a source group, names keep the ports they
were seen on. With `registry_aware`, names that belong to a registry catalog
are widened to what that registry needs - its recommended wildcards (IBM's
`*.icr.io`) or a catalog reference - because a pull that went to `dd0.icr.io`
today may be redirected to `dd2.icr.io` tomorrow.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from portcullis import catalog
from portcullis.basics.errors import InvalidName, LearnError
from portcullis.basics.ip import IPAddress
from portcullis.basics.names import normalize_name, parse_pattern
from portcullis.basics.vocabulary import Decision, Reason
from portcullis.catalog import templates
from portcullis.config import parse_policy

# Reasons a rule decides; a connection refused for any other reason (an
# address check, a bad ClientHello) would still be refused under any rule.
RULE_REASONS = frozenset({Reason.RULE_ALLOW, Reason.RULE_DENY, Reason.NO_RULE,
                          Reason.SOURCE_UNKNOWN, Reason.PORT_NOT_ALLOWED})


@dataclass(frozen=True, order=True)
class Dest:
    """One entry of a rule's `to:` list."""

    text: str  # a name, `*.suffix`, a CIDR, or a catalog id
    catalog: bool = False
    regions: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    params: tuple[tuple[str, str], ...] = ()

    def to_yaml(self) -> str | dict[str, Any]:
        if not self.catalog:
            return self.text
        out: dict[str, Any] = {"catalog": self.text}
        if self.regions:
            out["regions"] = list(self.regions)
        if set(self.include) != set(catalog.DEFAULT_INCLUDE):
            out["include"] = list(self.include)
        if self.params:
            out["params"] = dict(self.params)
        return out


@dataclass
class Observed:
    """What the logs hold: (client, host, port) let through, and what was skipped."""

    seen: set[tuple[IPAddress, str, int]] = field(default_factory=set)
    decisions: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    first: str | None = None
    last: str | None = None


def _host(raw: str) -> str:
    """A destination for `raw`: a normalized name, or a single-address CIDR."""
    try:
        address = ipaddress.ip_address(raw.strip("[]"))
    except ValueError:
        return normalize_name(raw)
    return str(ipaddress.ip_network(address))


def read_logs(paths: Iterable[str | Path]) -> Observed:
    found = Observed()
    for path in paths:
        with open(path, encoding="utf-8") as file:
            for line in file:
                try:
                    record = json.loads(line)
                except ValueError:
                    found.skipped["unreadable line"] += 1
                    continue
                if isinstance(record, dict) and record.get("event") == "decision":
                    _take(found, record)
    return found


def _take(found: Observed, record: dict[str, Any]) -> None:
    found.decisions += 1
    stamp = record.get("time")
    if isinstance(stamp, str):
        found.first = min(found.first or stamp, stamp)
        found.last = max(found.last or stamp, stamp)
    host, decision, reason = record.get("host"), record.get("decision"), record.get("reason")
    if decision == Decision.DENY and reason in RULE_REASONS:
        # Denied by the rules of an enforcing policy: maybe unwanted, so not
        # learnt; report mode is how to say "learn this".
        found.skipped[f"denied by an enforcing policy ({reason})"] += 1
        return
    if decision not in (Decision.ALLOW, Decision.REPORT) or reason not in RULE_REASONS:
        found.skipped[f"refused whatever the rules say ({reason})"] += 1
        return
    try:
        client = ipaddress.ip_address(str(record["client"]).partition("%")[0])
        port = int(record["port"])
        name = _host(str(host))
    except (KeyError, ValueError, InvalidName):
        found.skipped["no usable client, host or port"] += 1
        return
    if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped is not None:
        client = client.ipv4_mapped
    found.seen.add((client, name, port))


# --- registry-aware grouping -------------------------------------------------


def _template_regex(template: str) -> re.Pattern[str]:
    # split() alternates literal text and placeholder names; a placeholder that
    # comes back must hold the same value, hence the back-reference.
    out, seen = [], set()
    for i, part in enumerate(templates.PLACEHOLDER.split(template)):
        group = part.replace("-", "_")
        if i % 2 == 0:
            out.append(re.escape(part))
        elif group in seen:
            out.append(f"(?P={group})")
        else:
            seen.add(group)
            out.append(f"(?P<{group}>[a-z0-9-]+)")
    return re.compile("".join(out) + r"\Z")


def _match(entry: catalog.CatalogEntry, name: str) -> dict[str, str] | None:
    """The placeholder values under which `entry` names `name`, or None."""
    if entry.is_template:
        hit = _template_regex(entry.name).match(name)
        if hit is None:
            return None
        keys = templates.placeholders(entry.name)
        return {key: hit.group(key.replace("-", "_")) for key in keys}
    return {} if parse_pattern(entry.name).matches(name) else None


def _reference(cat: catalog.Catalog, members: list[str]) -> dict[str, Dest]:
    """Members as one catalog reference; names it cannot cover stay exact."""
    regions: set[str] = set()
    include = set(catalog.DEFAULT_INCLUDE)
    params: dict[str, set[str]] = defaultdict(set)
    for name in members:
        for entry in cat.entries:
            values = _match(entry, name)
            if values is not None:
                regions.update(entry.regions)
                include.update(t for t in entry.tags if t in catalog.OPT_IN_TAGS)
                for key, value in values.items():
                    params[key].add(value)
    ref = Dest(cat.id, catalog=True, regions=tuple(sorted(regions)),
               include=tuple(t for t in catalog.OPT_IN_TAGS if t in include),
               params=tuple((k, ",".join(sorted(v))) for k, v in sorted(params.items())))
    try:
        names = [entry.name for entry in catalog.select(
            cat, regions=list(ref.regions) or None, include=ref.include,
            params=dict(ref.params))]
    except catalog.CatalogError:
        return {name: Dest(name) for name in members}
    patterns = [parse_pattern(n) for n in names]
    return {name: ref if any(p.matches(name) for p in patterns) else Dest(name)
            for name in members}


def registry_groups(names: Iterable[str]) -> dict[str, Dest]:
    """For each name, the destination that allows it: a registry's wildcard, a
    catalog reference, or the name itself when no catalog knows it."""
    remaining = sorted(n for n in set(names) if "/" not in n)
    out: dict[str, Dest] = {}
    for cat_id in catalog.catalog_ids():
        cat = catalog.load_catalog(cat_id)
        members = [n for n in remaining if cat.covering_wildcard(n) is not None
                   or any(_match(e, n) is not None for e in cat.entries)]
        if not members:
            continue
        if cat.wildcards:
            for name in members:
                wildcard = cat.covering_wildcard(name)
                out[name] = Dest(wildcard.name if wildcard else name)
        else:
            out.update(_reference(cat, members))
        remaining = [n for n in remaining if n not in out]
    out.update({n: Dest(n) for n in remaining})
    return out


# --- the policy --------------------------------------------------------------


def _networks(clients: Iterable[IPAddress]) -> list[str]:
    listed = list(clients)
    v4 = [ipaddress.IPv4Network(c) for c in listed if isinstance(c, ipaddress.IPv4Address)]
    v6 = [ipaddress.IPv6Network(c) for c in listed if isinstance(c, ipaddress.IPv6Address)]
    return [str(n) for n in ipaddress.collapse_addresses(v4)] + [
        str(n) for n in ipaddress.collapse_addresses(v6)]


def learn_policy(found: Observed, *, registry_aware: bool = False) -> dict[str, Any]:
    if not found.seen:
        skipped = "".join(f"; {n} {what}" for what, n in sorted(found.skipped.items()))
        raise LearnError(
            f"nothing to learn: {found.decisions} decisions, none let through{skipped}"
            if found.decisions else f"no decision records in the logs{skipped}")
    hosts = {host for _, host, _ in found.seen}
    dests = registry_groups(hosts) if registry_aware else {}
    access: dict[IPAddress, set[tuple[Dest, int]]] = defaultdict(set)
    for client, host, port in found.seen:
        access[client].add((dests.get(host) or Dest(host), port))
    # Clients that reached exactly the same things share a source group.
    profiles: dict[frozenset[tuple[Dest, int]], list[IPAddress]] = defaultdict(list)
    for client, reached in access.items():
        profiles[frozenset(reached)].append(client)
    ordered = sorted(profiles.items(), key=lambda item: min(item[1]))
    sources: dict[str, list[str]] = {}
    rules: list[dict[str, Any]] = []
    for number, (profile, clients) in enumerate(ordered, 1):
        group = "clients" if len(ordered) == 1 else f"clients-{number}"
        sources[group] = _networks(clients)
        ports_of: dict[Dest, set[int]] = defaultdict(set)
        for dest, port in profile:
            ports_of[dest].add(port)
        by_ports: dict[tuple[int, ...], list[Dest]] = defaultdict(list)
        for dest, ports in ports_of.items():
            by_ports[tuple(sorted(ports))].append(dest)
        for port_list, members in sorted(by_ports.items()):
            name = "learnt" if len(ordered) == 1 else f"learnt-{group}"
            if len(by_ports) > 1:
                name += "-port-" + "-".join(map(str, port_list))
            members.sort(key=lambda d: (not d.catalog, d.text))
            rules.append({"name": name, "from": [group], "to": [d.to_yaml() for d in members],
                          "ports": list(port_list), "action": "allow"})
    return {"version": 1, "mode": "enforce", "sources": sources, "rules": rules,
            "default": "deny"}


def render(policy: dict[str, Any], found: Observed, sources: Sequence[str], *,
           registry_aware: bool = False) -> str:
    """YAML with a header saying where it came from; checked with parse_policy."""
    span = f" ({found.first} .. {found.last})" if found.first else ""
    lines = [f"# Learnt by `portcullis learn` from {found.decisions} decisions{span}"]
    if registry_aware:
        lines += [f"# in {', '.join(sources)}. It allows what those connections asked for,",
                  "# registry names widened to what their registry needs (--registry-aware);"]
    else:
        lines += [f"# in {', '.join(sources)}. It allows exactly what those connections asked for;"]
    lines.append("# review it, and add listen/resolver settings before enforcing it.")
    if found.skipped:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(found.skipped.items()))
        lines.append(f"# Not learnt: {counts}")
    text = "\n".join(lines) + "\n" + yaml.safe_dump(policy, sort_keys=False,
                                                    default_flow_style=False)
    parse_policy(text, "<learnt policy>")  # a bug here must not reach a firewall
    return text
