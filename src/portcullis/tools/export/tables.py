"""First-match decisions flattened into the tables targets match with.

Many targets pick the most specific entry (longest source prefix, exact name,
longest wildcard) instead of the first rule. The source classes and name tables
here are Portcullis's decisions written out so that such a target decides the
same; `decided_set` is the same again for targets that can only list names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from portcullis.basics.ip import IPNetwork
from portcullis.basics.names import parent_suffixes
from portcullis.tools.export.model import ExportRule, ExportSpec


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
