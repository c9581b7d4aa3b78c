"""What every export format reads: the policy's rules in order, flattened.

A format module gets an `ExportSpec` and returns text. The spec keeps the
policy's semantics (DESIGN §1) in a form the translations can reason about:
each rule's exact names and `*.suffix` wildcards apart, its sources as CIDRs,
its ports. `ExportRefused` carries what a format cannot express; the command
prints it and exits 2, because a silently widened or narrowed export is worse
than none.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from portcullis.basics.errors import ExportRefused
from portcullis.basics.ip import IPNetwork, parse_network
from portcullis.basics.names import parent_suffixes, parse_pattern
from portcullis.config import Policy
from portcullis.net.resolver import parse_server
from portcullis.policy.engine import Engine

ANY_SOURCE = "any"
_ANY_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("0.0.0.0/0"),
    ipaddress.ip_network("::/0"),
)


@dataclass(frozen=True, slots=True)
class ExportRule:
    index: int
    name: str
    allow: bool
    groups: frozenset[str]
    networks: tuple[IPNetwork, ...]  # union of the CIDRs of its groups
    ports: tuple[int, ...]
    exact: tuple[str, ...]  # normalized names, first appearance kept
    wildcards: tuple[str, ...]  # suffixes of `*.suffix` patterns
    cidrs: tuple[IPNetwork, ...]
    resolves_to: tuple[IPNetwork, ...] | None

    @property
    def action(self) -> str:
        return "allow" if self.allow else "deny"

    def matches_name(self, name: str) -> bool:
        return name in self.exact or any(name.endswith("." + w) for w in self.wildcards)


@dataclass(frozen=True, slots=True)
class ExportSpec:
    origin: str  # "policy FILE" or a description of a catalog selection
    sha256: str  # of the policy file's bytes, or of the selected names
    generated: str  # RFC 3339 UTC
    mode: str
    default_allow: bool
    groups: Mapping[str, tuple[IPNetwork, ...]]
    rules: tuple[ExportRule, ...]
    tls_ports: frozenset[int]
    resolver_servers: tuple[str, ...] = ()  # "ip:port" / "[v6]:port"
    connect_timeout: float = 10.0
    idle_timeout: float = 600.0

    @property
    def default(self) -> str:
        return "allow" if self.default_allow else "deny"

    def ports(self) -> list[int]:
        return sorted({p for rule in self.rules for p in rule.ports})


def generated_now() -> str:
    """Now in UTC, or SOURCE_DATE_EPOCH when set, so that builds can be reproducible."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    seconds = int(epoch) if epoch and epoch.isdigit() else int(time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _collapse(networks: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """The same addresses without overlaps: Squid, for one, ignores the wider of
    two overlapping CIDRs in an ACL, which would silently narrow a rule."""
    items = list(networks)
    v4 = [n for n in items if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in items if isinstance(n, ipaddress.IPv6Network)]
    return (*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6))


def _server_text(server: str) -> str:
    host, port = parse_server(server)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def spec_from_policy(
    policy: Policy, *, origin: str, data: bytes, generated: str | None = None
) -> ExportSpec:
    """Flatten a loaded policy; `data` is the file's bytes, hashed into the header."""
    groups: dict[str, tuple[IPNetwork, ...]] = {
        name: tuple(networks) for name, networks in policy.sources.items()
    }
    rules: list[ExportRule] = []
    for compiled in Engine(policy).rules:
        for ref in compiled.groups:
            # Inline CIDRs in `from:` are anonymous groups, as in the engine.
            if ref not in groups:
                groups[ref] = (parse_network(ref),)
        exact: list[str] = []
        wildcards: list[str] = []
        cidrs: list[IPNetwork] = []
        for dest in compiled.destinations:
            if "/" in dest:
                cidrs.append(parse_network(dest))
                continue
            pattern = parse_pattern(dest)
            (wildcards if pattern.wildcard else exact).append(pattern.suffix)
        networks = _collapse(n for g in sorted(compiled.groups) for n in groups[g])
        rules.append(
            ExportRule(
                index=compiled.index,
                name=compiled.name,
                allow=compiled.action.value == "allow",
                groups=compiled.groups,
                networks=networks,
                ports=tuple(sorted(compiled.ports)),
                exact=_unique(exact),
                wildcards=_unique(wildcards),
                cidrs=tuple(dict.fromkeys(cidrs)),
                resolves_to=compiled.resolves_to,
            )
        )
    return ExportSpec(
        origin=origin,
        sha256=hashlib.sha256(data).hexdigest(),
        generated=generated or generated_now(),
        mode=policy.mode,
        default_allow=policy.default == "allow",
        groups=groups,
        rules=tuple(rules),
        tls_ports=frozenset(policy.tls_ports),
        resolver_servers=tuple(_server_text(s) for s in policy.resolver.servers),
        connect_timeout=policy.limits.connect_timeout,
        idle_timeout=policy.limits.idle_timeout,
    )


def spec_from_names(
    names: Sequence[str], *, origin: str, ports: Sequence[int] = (443,),
    generated: str | None = None,
) -> ExportSpec:
    """A catalog selection as a one-rule policy: any client may reach these names."""
    exact: list[str] = []
    wildcards: list[str] = []
    for name in names:
        pattern = parse_pattern(name)
        (wildcards if pattern.wildcard else exact).append(pattern.suffix)
    rule = ExportRule(
        index=0,
        name="catalog",
        allow=True,
        groups=frozenset({ANY_SOURCE}),
        networks=_ANY_NETWORKS,
        ports=tuple(sorted(set(ports))),
        exact=_unique(exact),
        wildcards=_unique(wildcards),
        cidrs=(),
        resolves_to=None,
    )
    digest = hashlib.sha256("".join(f"{n}\n" for n in names).encode()).hexdigest()
    return ExportSpec(
        origin=origin,
        sha256=digest,
        generated=generated or generated_now(),
        mode="enforce",
        default_allow=False,
        groups={ANY_SOURCE: _ANY_NETWORKS},
        rules=(rule,),
        tls_ports=frozenset({443}),
    )


def spec_from_file(path: str | Path, policy: Policy, generated: str | None = None) -> ExportSpec:
    file = Path(path)
    return spec_from_policy(
        policy, origin=f"policy {file}", data=file.read_bytes(), generated=generated
    )


# --- text safety ------------------------------------------------------------

_UNSAFE = re.compile(r"[^\x20-\x7e]")


def comment_text(text: str) -> str:
    """A rule or group name made safe for a one-line comment in any format.

    Names come from the policy file; a newline in one must not become a
    directive in the generated configuration.
    """
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def slug(text: str, *, limit: int = 63) -> str:
    """Lowercase letters, digits and '-' only: usable as a Kubernetes, AWS or
    Azure resource name part whatever the rule was called."""
    out = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (out or "x")[:limit].rstrip("-") or "x"


def header_lines(spec: ExportSpec, fmt: str, notes: Sequence[str] = ()) -> list[str]:
    lines = [
        f"Generated by `portcullis export --format {fmt}`; regenerate instead of editing.",
        f"Source: {comment_text(spec.origin)}",
        f"Source sha256: {spec.sha256}",
        f"Generated: {spec.generated}",
        f"Policy default: {spec.default}; rules are applied first match wins, as in Portcullis.",
    ]
    lines.extend(comment_text(n) for n in notes)
    return lines


def metadata(spec: ExportSpec, fmt: str, notes: Sequence[str] = ()) -> dict[str, object]:
    """The header as a JSON object, for formats without comments."""
    return {
        "generator": f"portcullis export --format {fmt}",
        "source": spec.origin,
        "sha256": spec.sha256,
        "generated": spec.generated,
        "default": spec.default,
        "notes": list(notes),
    }


# --- checks shared by the formats --------------------------------------------


def common_problems(
    spec: ExportSpec, fmt: str, *, cidr_destinations: bool, default_allow: bool = True
) -> list[str]:
    """What no format here can carry (report mode, resolves_to), and the
    optional features a format declares it lacks."""
    problems: list[str] = []
    if spec.mode == "report":
        problems.append(
            f"mode: report lets would-be denials through and logs them; {fmt} has no such"
            " mode here. Export a policy with mode: enforce"
        )
    for rule in spec.rules:
        if rule.resolves_to is not None:
            problems.append(
                f"rule {rule.name!r} has resolves_to, a check of the addresses a name"
                f" resolves to, which {fmt} cannot make; remove it to export"
            )
        if rule.cidrs and not cidr_destinations:
            cidrs = ", ".join(str(c) for c in rule.cidrs)
            problems.append(
                f"rule {rule.name!r} has CIDR destinations ({cidrs}); Portcullis applies them"
                f" only to clients that ask for an IP address, which {fmt} cannot tell from"
                " the addresses of an allowed name"
            )
    if spec.default_allow and not default_allow:
        problems.append(
            f"default: allow cannot be expressed in {fmt}, which can only allow listed names;"
            " write default: deny and allow the names"
        )
    return problems


def sni_port_problems(spec: ExportSpec, fmt: str) -> list[str]:
    """An SNI router reads the name from a TLS ClientHello, so it cannot serve
    a rule on a plain-HTTP port, where Portcullis reads the Host header."""
    return [
        f"rule {rule.name!r} covers port {port}, which is not in tls_ports; {fmt} routes"
        " by TLS SNI and cannot read an HTTP Host header"
        for rule in spec.rules
        for port in rule.ports
        if port not in spec.tls_ports
    ]


def refuse_if(fmt: str, problems: Sequence[str]) -> None:
    if problems:
        # The same exception shows up once per port and source class; say it once.
        raise ExportRefused(fmt, list(dict.fromkeys(problems)))


# --- source classes ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceClass:
    """Clients whose longest matching source CIDR is one of `networks` belong to
    exactly the groups in `groups` (the groups of every CIDR containing it)."""

    key: str  # c1, c2...: a stable identifier for generated names
    groups: frozenset[str]
    networks: tuple[IPNetwork, ...]


def source_classes(spec: ExportSpec) -> list[SourceClass]:
    """Partition the source CIDRs by the set of groups a client in them is in.

    This is the engine's SourceIndex, written out: a target that picks the most
    specific matching prefix (nginx geo, Envoy source_prefix_ranges) gets the
    same groups for every client as Portcullis does.
    """
    networks: list[IPNetwork] = []
    for group_networks in spec.groups.values():
        networks.extend(group_networks)
    unique = list(dict.fromkeys(networks))
    by_class: dict[frozenset[str], list[IPNetwork]] = {}
    for network in unique:
        members = frozenset(
            group
            for group, group_networks in spec.groups.items()
            if any(
                g.version == network.version and network.subnet_of(g)  # type: ignore[arg-type]
                for g in group_networks
            )
        )
        by_class.setdefault(members, []).append(network)
    ordered = sorted(by_class.items(), key=lambda item: sorted(item[0]))
    return [
        SourceClass(f"c{i}", groups, tuple(nets))
        for i, (groups, nets) in enumerate(ordered, start=1)
    ]


def applicable(spec: ExportSpec, groups: frozenset[str], port: int | None) -> list[ExportRule]:
    """The rules that can decide for a client in `groups` on `port` (any port: None)."""
    return [
        r
        for r in spec.rules
        if not r.groups.isdisjoint(groups) and (port is None or port in r.ports)
    ]


# --- name tables ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NameTable:
    """First-match decisions, keyed for targets that pick the most specific entry.

    `exact[n]` decides the name n; `wildcard[s]` decides every name under s that
    has no more specific key. A value of None means no rule matches: the
    policy's default. Correct because the rules that match a name x without an
    exact key are exactly the wildcards on the longest key suffix of x and the
    suffixes of that key, so the first of them depends on the key alone.
    """

    exact: dict[str, ExportRule | None]
    wildcard: dict[str, ExportRule | None]

    def covering(self, name: str) -> str | None:
        """The most specific wildcard key strictly above `name`."""
        for suffix in parent_suffixes(name):
            if suffix in self.wildcard:
                return suffix
        return None


def name_table(rules: Sequence[ExportRule]) -> NameTable:
    first_exact: dict[str, int] = {}
    first_wild: dict[str, int] = {}
    for position, rule in enumerate(rules):
        for name in rule.exact:
            first_exact.setdefault(name, position)
        for suffix in rule.wildcards:
            first_wild.setdefault(suffix, position)

    def first(candidates: Iterable[int | None]) -> ExportRule | None:
        found = [c for c in candidates if c is not None]
        return rules[min(found)] if found else None

    exact = {
        name: first([first_exact.get(name), *(first_wild.get(s) for s in parent_suffixes(name))])
        for name in first_exact
    }
    wildcard = {
        suffix: first(
            [first_wild.get(suffix), *(first_wild.get(s) for s in parent_suffixes(suffix))]
        )
        for suffix in first_wild
    }
    return NameTable(exact, wildcard)


def decides_allow(rule: ExportRule | None, default_allow: bool) -> bool:
    return default_allow if rule is None else rule.allow


@dataclass(frozen=True, slots=True)
class NameSet:
    """A set of names as exact names plus `*.suffix` wildcards (one or more labels)."""

    exact: tuple[str, ...]
    wildcards: tuple[str, ...]

    def patterns(self) -> list[str]:
        return [*self.exact, *(f"*.{w}" for w in self.wildcards)]

    def __bool__(self) -> bool:
        return bool(self.exact or self.wildcards)


def _who(rule: ExportRule | None, default_allow: bool) -> str:
    if rule is None:
        return f"the default ({'allow' if default_allow else 'deny'})"
    return f"rule {rule.name!r}"


def decided_set(
    table: NameTable, *, default_allow: bool, want_allow: bool, fmt: str, problems: list[str]
) -> NameSet:
    """The names the table decides `want_allow` for, as a plain union of patterns.

    For targets that can only list names (allow lists, deny lists): a narrower
    key deciding the other way under a wildcard is an exception a union cannot
    express, and is reported in `problems`.
    """
    chosen_wild = [
        s for s, r in table.wildcard.items() if decides_allow(r, default_allow) == want_allow
    ]
    chosen_exact = [
        n for n, r in table.exact.items() if decides_allow(r, default_allow) == want_allow
    ]
    chosen = set(chosen_wild)
    verb = "allow" if want_allow else "deny"
    other = "denies" if want_allow else "allows"
    for key, rule, label in [
        *((n, r, n) for n, r in table.exact.items()),
        *((s, r, f"*.{s}") for s, r in table.wildcard.items()),
    ]:
        if decides_allow(rule, default_allow) == want_allow:
            continue
        above = table.covering(key)
        if above is not None and above in chosen:
            problems.append(
                f"{_who(rule, default_allow)} {other} {label}, inside *.{above} which"
                f" {_who(table.wildcard[above], default_allow)} decides to {verb}; {fmt} can"
                f" only list names to {verb}, so this exception cannot be expressed."
                f" List the names under {above} instead of the wildcard"
            )
    # Entries already covered by a chosen wildcard add nothing.
    wild = [s for s in chosen_wild if table.covering(s) not in chosen]
    exact = [n for n in chosen_exact if table.covering(n) not in chosen]
    return NameSet(tuple(sorted(exact)), tuple(sorted(wild)))
