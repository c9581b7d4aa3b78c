"""What every export format reads: the policy's rules in order, flattened.

A format module gets an `ExportSpec` and returns text. The spec keeps the
policy's semantics (docs/semantics.md §1-§3) in a form the translations can reason about:
each rule's exact names and `*.suffix` wildcards apart, its sources as CIDRs,
its ports. build.py makes one from a policy or a catalog selection.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from portcullis.basics.ip import IPNetwork
from portcullis.tools.export.runtime import RuntimeFeature


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
    # What Portcullis does at run time that no export writes (runtime.py).
    runtime: tuple[RuntimeFeature, ...] = ()

    @property
    def default(self) -> str:
        return "allow" if self.default_allow else "deny"

    def ports(self) -> list[int]:
        return sorted({p for rule in self.rules for p in rule.ports})
