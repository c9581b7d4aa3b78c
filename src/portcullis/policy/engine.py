"""Compile a policy once, then decide (docs/semantics.md §2).

The first rule whose source, destination and port all match decides. Compiled,
a decision costs one longest-prefix lookup for the client (cached) and one hash
lookup per label of the name, whatever the number of rules: rules are indexed by
exact name and by wildcard suffix, never scanned.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from portcullis import catalog
from portcullis.basics.ip import IPAddress, IPNetwork, parse_network, peer_address, unmap
from portcullis.basics.memo import remember
from portcullis.basics.names import parent_suffixes, parse_pattern
from portcullis.basics.vocabulary import Decision, Reason
from portcullis.config import Policy, Rule
from portcullis.policy.identities import IdentityIndex
from portcullis.policy.inspection import Inspection

_CLIENT_CACHE_MAX = 65536
_DECIDED_MAX = 4096


@dataclass(frozen=True, slots=True)
class CompiledRule:
    index: int
    name: str
    action: Decision
    groups: frozenset[str]
    ports: frozenset[int]
    destinations: tuple[str, ...]
    resolves_to: tuple[IPNetwork, ...] | None
    raw: bool = False  # tunnels may carry bytes that are not TLS (ports outside tls_ports)
    inspect: Inspection | None = None  # decrypt and judge each request (policy/inspection.py)
    # `action is Decision.ALLOW`, read on every connection: under Python 3.11 an
    # Enum class attribute is found through EnumType's __getattr__ hook on each
    # lookup (about 500 instructions under callgrind, 90 ns timed hot, against 8
    # for a field; bench/findings.md, tenth part).
    allows: bool = field(init=False)
    # The CIDR destinations, parsed once: they vouch for an IP literal's address.
    cidrs: tuple[IPNetwork, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allows", self.action is Decision.ALLOW)
        object.__setattr__(self, "cidrs",
                           tuple(parse_network(d) for d in self.destinations if "/" in d))


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the rules say: `allow` or `deny`, and why. Report mode is not applied
    here: admission (proxy/admission.py) is the one place that does."""

    decision: Decision
    reason: Reason
    rule: CompiledRule | None
    allowed: bool = field(init=False)  # not DENY; a field for the reason CompiledRule.allows is

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed", self.decision is not Decision.DENY)

    @property
    def rule_name(self) -> str | None:
        return self.rule.name if self.rule is not None else None


class SourceIndex:
    """Client address -> the source groups it belongs to, by longest prefix.

    Each stored prefix carries the groups of every prefix that covers it, so
    the longest match alone gives the full answer.
    """

    def __init__(self, groups: Mapping[str, Sequence[IPNetwork]]) -> None:
        members: dict[IPNetwork, set[str]] = {}
        for group, networks in groups.items():
            for network in networks:
                members.setdefault(network, set()).add(group)
        self._tables: dict[int, list[tuple[int, dict[int, frozenset[str]]]]] = {4: [], 6: []}
        by_len: dict[tuple[int, int], dict[int, set[str]]] = {}
        for network, names in members.items():
            key = (network.version, network.prefixlen)
            by_len.setdefault(key, {})[int(network.network_address)] = names
        for (version, prefixlen), table in by_len.items():
            bits = 32 if version == 4 else 128
            shorter = [p for (v, p) in by_len if v == version and p < prefixlen]
            full: dict[int, frozenset[str]] = {}
            for address, names in table.items():
                merged = set(names)
                for p in shorter:
                    mask = ((1 << p) - 1) << (bits - p) if p else 0
                    merged |= by_len[(version, p)].get(address & mask, set())
                full[address] = frozenset(merged)
            self._tables[version].append((prefixlen, full))
        for version in (4, 6):
            self._tables[version].sort(key=lambda item: -item[0])
        # By the address, or by the text a socket gave as its peer: the proxy
        # asks with the text, whose hash is C's and kept in the string, where an
        # ipaddress object hashes in Python (a few thousand instructions).
        self._cache: dict[IPAddress | str, frozenset[str]] = {}

    def groups_of(self, client: IPAddress | str) -> frozenset[str]:
        """The groups of `client`: an address, or a socket peer's address text."""
        cached = self._cache.get(client)
        if cached is not None:
            return cached
        found: frozenset[str] = frozenset()
        # An IPv4-mapped IPv6 address is looked up as the IPv4 address it carries.
        looked_up = peer_address(client) if isinstance(client, str) else unmap(client)
        version = looked_up.version
        bits = 32 if version == 4 else 128
        address = int(looked_up)
        for prefixlen, table in self._tables[version]:
            hit = table.get(address >> (bits - prefixlen) << (bits - prefixlen))
            if hit is not None:
                found = hit
                break
        return remember(self._cache, client, found, _CLIENT_CACHE_MAX)


def expand_destinations(rule: Rule) -> list[str]:
    """A rule's `to:` as names, `*.suffix` patterns and CIDRs: each catalog
    reference becomes the names it selects (checked when the policy loaded)."""
    destinations: list[str] = []
    for dest in rule.to:
        if isinstance(dest, str):
            destinations.append(dest)
        else:
            destinations.extend(entry.name for entry in catalog.select_reference(dest))
    return destinations


@dataclass(slots=True)
class _Index:
    exact: dict[str, list[int]] = field(default_factory=dict)
    wildcard: dict[str, list[int]] = field(default_factory=dict)
    cidr: list[tuple[IPNetwork, int]] = field(default_factory=list)


class Engine:
    """A compiled policy. Pure: deciding reads only the compiled structures."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        groups: dict[str, list[IPNetwork]] = {k: list(v) for k, v in policy.sources.items()}
        for identity_group in policy.identities.values():
            for ref in identity_group.from_ or ():  # an inline CIDR: an anonymous group
                if ref not in groups:
                    groups[ref] = [parse_network(ref)]
        rules: list[CompiledRule] = []
        index = _Index()
        for position, rule in enumerate(policy.rules):
            rule_groups = set()
            for ref in rule.from_:
                if ref in groups or ref in policy.identities:
                    rule_groups.add(ref)
                else:  # an inline CIDR: an anonymous group of its own
                    groups.setdefault(ref, [parse_network(ref)])
                    rule_groups.add(ref)
            compiled = CompiledRule(
                index=position,
                name=rule.name,
                action=Decision.ALLOW if rule.action == "allow" else Decision.DENY,
                groups=frozenset(rule_groups),
                ports=frozenset(rule.ports),
                destinations=tuple(expand_destinations(rule)),
                resolves_to=tuple(rule.resolves_to) if rule.resolves_to is not None else None,
                raw=rule.raw,
                inspect=(Inspection.compile(rule.inspect.repositories, rule.inspect.access)
                         if rule.inspect is not None else None),
            )
            rules.append(compiled)
            index.cidr.extend((net, position) for net in compiled.cidrs)
            for dest in compiled.destinations:
                if "/" in dest:
                    continue  # in compiled.cidrs
                pattern = parse_pattern(dest)
                table = index.wildcard if pattern.wildcard else index.exact
                positions = table.setdefault(pattern.suffix, [])
                if not positions or positions[-1] != position:
                    positions.append(position)
        self.rules: tuple[CompiledRule, ...] = tuple(rules)
        self.sources = SourceIndex(groups)
        self.identities = IdentityIndex(policy.identities)
        self._exact = {k: tuple(v) for k, v in index.exact.items()}
        self._wildcard = {k: tuple(v) for k, v in index.wildcard.items()}
        self._cidr = tuple(index.cidr)
        # Verdicts are immutable: build each once so deciding allocates nothing.
        self._rule_verdicts = tuple(self._verdict_for_rule(r) for r in self.rules)
        self._default = {reason: self._default_verdict(reason) for reason in Reason}
        self._decided: dict[tuple[frozenset[str], str, int, bool], Verdict] = {}

    # -- verdict construction ---------------------------------------------

    def _verdict_for_rule(self, rule: CompiledRule) -> Verdict:
        reason = Reason.RULE_ALLOW if rule.action is Decision.ALLOW else Reason.RULE_DENY
        return Verdict(rule.action, reason, rule)

    def _default_verdict(self, reason: Reason) -> Verdict:
        action = Decision.ALLOW if self.policy.default == "allow" else Decision.DENY
        return Verdict(action, reason, None)

    # -- deciding -----------------------------------------------------------

    def candidates(self, host: str) -> list[int]:
        """Rule positions whose destinations match `host`, ascending."""
        found: list[int] = list(self._exact.get(host, ()))
        lists = 1 if found else 0
        for suffix in parent_suffixes(host):
            hit = self._wildcard.get(suffix)
            if hit is not None:
                found.extend(hit)
                lists += 1
        if lists > 1:
            found.sort()
        return found

    def groups_of(self, client: IPAddress | str, identity: str | None = None) -> frozenset[str]:
        """The client's source groups: by its address (or a socket peer's address
        text), and by its proven identity."""
        groups = self.sources.groups_of(client)
        if identity is None or not self.identities:
            return groups
        return groups | self.identities.groups_of(identity, groups)

    def could_identify(self, client: IPAddress | str, host: str, port: int, *,
                       is_ip: bool = False) -> bool:
        """Whether some identity would get `client` an allow the address alone does not:
        then missing credentials are what stands in the way (407, not 403)."""
        if not self.identities:
            return False
        groups = self.sources.groups_of(client)
        reachable = self.identities.reachable(groups)
        return bool(reachable) and self.decide_for(groups | reachable, host, port,
                                                   is_ip=is_ip).allowed

    def decide(self, client: IPAddress | str, host: str, port: int, *, is_ip: bool = False,
               identity: str | None = None) -> Verdict:
        """Decide for a normalized `host` (or an IP literal when `is_ip`)."""
        return self.decide_for(self.groups_of(client, identity), host, port, is_ip=is_ip)

    def decide_for(self, groups: frozenset[str], host: str, port: int, *,
                   is_ip: bool = False) -> Verdict:
        """Decide for a client in `groups`."""
        # The rules are fixed for the engine's life (a reload builds a new one)
        # and the same few (groups, name, port) recur on every connection, so
        # the verdicts are kept; a client asking for ever new names only
        # empties the table.
        key = (groups, host, port, is_ip)
        verdict = self._decided.get(key)
        if verdict is None:
            verdict = remember(self._decided, key, self._decide_for(groups, host, port, is_ip),
                               _DECIDED_MAX)
        return verdict

    def _decide_for(self, groups: frozenset[str], host: str, port: int, is_ip: bool) -> Verdict:
        if not groups:
            return self._default[Reason.SOURCE_UNKNOWN]
        if is_ip:
            address = ipaddress.ip_address(host)
            positions = [p for net, p in self._cidr if address in net]
        else:
            positions = self.candidates(host)
        port_refused = False
        rules = self.rules
        for position in positions:
            rule = rules[position]
            if rule.groups.isdisjoint(groups):
                continue
            if port not in rule.ports:
                port_refused = True
                continue
            return self._rule_verdicts[position]
        return self._default[Reason.PORT_NOT_ALLOWED if port_refused else Reason.NO_RULE]
