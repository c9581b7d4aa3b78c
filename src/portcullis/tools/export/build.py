"""Making an ExportSpec: from a policy file, or from a catalog selection."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from portcullis.basics.errors import ExportRefused
from portcullis.basics.ip import IPNetwork, parse_network
from portcullis.basics.names import parse_pattern
from portcullis.config import Policy
from portcullis.net.resolver import parse_server
from portcullis.policy.engine import Engine
from portcullis.tools.export.model import ExportRule, ExportSpec
from portcullis.tools.export.runtime import features_of

ANY_SOURCE = "any"
_ANY_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("0.0.0.0/0"),
    ipaddress.ip_network("::/0"),
)


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
    by_identity = [r.name for r in policy.rules if any(g in policy.identities for g in r.from_)]
    if by_identity:
        raise ExportRefused("another firewall", [
            f"rule {name!r} names an identity group; a login or a client certificate is"
            " checked by Portcullis alone, so no export can decide the same way"
            for name in by_identity])
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
        runtime=features_of(policy),
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
