"""Envoy: a bootstrap (YAML) with one listener per port whose filter chains
match the SNI, forward allowed names through the SNI dynamic forward proxy, and
close denied ones.

Envoy picks a filter chain by the most specific `server_names` entry (exact,
then the longest `*.suffix`, which matches one or more labels and never the
apex), then by the most specific `source_prefix_ranges`. Neither is "first
rule wins", so the decisions come from tables.NameTable per source class:
keys with the same decisions for every class share a chain. Each key also gets
a chain without source ranges for clients in no source group, because Envoy
does not fall back to a less specific name when no source range matches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from portcullis.basics.ip import IPNetwork
from portcullis.tools.export.model import ExportRule, ExportSpec
from portcullis.tools.export.refusals import common_problems, refuse_if, sni_port_problems
from portcullis.tools.export.tables import (
    SourceClass,
    applicable,
    decides_allow,
    name_table,
    source_classes,
)
from portcullis.tools.export.text import header_lines

FORMAT = "envoy"
OPTIONS = {
    "listen": "address to listen on (default: 0.0.0.0)",
}

_DNS_CACHE = {"name": "portcullis_dns_cache", "dns_lookup_family": "V4_ONLY"}
_FORWARD_CLUSTER = "portcullis_forward"
_DENY_CLUSTER = "portcullis_deny"


def _range(network: IPNetwork) -> dict[str, Any]:
    return {"address_prefix": str(network.network_address), "prefix_len": network.prefixlen}


def _filters(allow: bool, port: int) -> list[dict[str, Any]]:
    if allow:
        return [
            {
                "name": "envoy.filters.network.sni_dynamic_forward_proxy",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network"
                    ".sni_dynamic_forward_proxy.v3.FilterConfig",
                    "port_value": port,
                    "dns_cache_config": dict(_DNS_CACHE),
                },
            },
            {
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network"
                    ".tcp_proxy.v3.TcpProxy",
                    "stat_prefix": f"portcullis_allow_{port}",
                    "cluster": _FORWARD_CLUSTER,
                },
            },
        ]
    # RBAC with a deny-all policy closes the connection; tcp_proxy is only
    # there because a chain must end in a terminal filter.
    return [
        {
            "name": "envoy.filters.network.rbac",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
                "stat_prefix": f"portcullis_deny_{port}",
                "rules": {
                    "action": "DENY",
                    "policies": {
                        "portcullis-deny": {
                            "permissions": [{"any": True}],
                            "principals": [{"any": True}],
                        }
                    },
                },
            },
        },
        {
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network"
                ".tcp_proxy.v3.TcpProxy",
                "stat_prefix": f"portcullis_deny_{port}",
                "cluster": _DENY_CLUSTER,
            },
        },
    ]


def _chain(
    name: str, port: int, allow: bool, server_names: list[str] | None,
    ranges: list[IPNetwork] | None,
) -> dict[str, Any]:
    match: dict[str, Any] = {}
    if server_names:
        match["server_names"] = list(server_names)  # a copy: no YAML aliases
    if ranges:
        match["source_prefix_ranges"] = [_range(n) for n in ranges]
    chain: dict[str, Any] = {"name": name}
    if match:
        chain["filter_chain_match"] = match
    chain["filters"] = _filters(allow, port)
    return chain


def _listener(
    spec: ExportSpec, port: int, classes: list[SourceClass], address: str
) -> dict[str, Any]:
    default = spec.default_allow
    tables = {c.key: name_table(applicable(spec, c.groups, port)) for c in classes}
    keys: list[str] = []
    for table in tables.values():
        keys.extend(table.exact)
        keys.extend(f"*.{s}" for s in table.wildcard)
    keys = list(dict.fromkeys(keys))

    def decision(key: str, cls: SourceClass) -> bool:
        table = tables[cls.key]
        rule: ExportRule | None
        if key.startswith("*."):
            suffix = key[2:]
            above = suffix if suffix in table.wildcard else table.covering(suffix)
            rule = table.wildcard[above] if above is not None else None
        elif key in table.exact:
            rule = table.exact[key]
        else:
            above = table.covering(key)
            rule = table.wildcard[above] if above is not None else None
        return decides_allow(rule, default)

    # Keys whose decisions agree for every class share chains.
    groups: dict[tuple[bool, ...], list[str]] = {}
    for key in keys:
        groups.setdefault(tuple(decision(key, c) for c in classes), []).append(key)
    chains: list[dict[str, Any]] = []
    for n, (signature, names) in enumerate(groups.items(), start=1):
        for allow in (True, False):
            ranges = [net for c, d in zip(classes, signature, strict=True) if d is allow
                      for net in c.networks]
            if ranges:
                verb = "allow" if allow else "deny"
                chains.append(_chain(f"names{n}-{verb}", port, allow, names, ranges))
        # Clients in no source group: the default.
        chains.append(_chain(f"names{n}-other-clients", port, default, names, None))
    # Names no rule mentions (and ClientHellos without SNI): the default for every
    # class. Without SNI, Portcullis refuses (no_sni); the forward proxy, having
    # no name to dial, closes such a connection too.
    chains.append(_chain("other-names", port, default, None, None))
    return {
        "name": f"portcullis_{port}",
        "address": {"socket_address": {"address": address, "port_value": port}},
        "listener_filters": [
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.listener"
                    ".tls_inspector.v3.TlsInspector"
                },
            }
        ],
        "filter_chains": chains,
    }


def render(spec: ExportSpec, options: Mapping[str, str]) -> str:
    problems = common_problems(spec, FORMAT, cidr_destinations=True)
    refuse_if(FORMAT, problems + sni_port_problems(spec, FORMAT))
    address = options.get("listen", "0.0.0.0")
    classes = source_classes(spec)
    config: dict[str, Any] = {
        "static_resources": {
            "listeners": [_listener(spec, port, classes, address) for port in spec.ports()],
            "clusters": [
                {
                    "name": _FORWARD_CLUSTER,
                    "connect_timeout": "10s",
                    "lb_policy": "CLUSTER_PROVIDED",
                    "cluster_type": {
                        "name": "envoy.clusters.dynamic_forward_proxy",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.clusters"
                            ".dynamic_forward_proxy.v3.ClusterConfig",
                            "dns_cache_config": dict(_DNS_CACHE),
                        },
                    },
                },
                {
                    "name": _DENY_CLUSTER,
                    "connect_timeout": "1s",
                    "type": "STATIC",
                    "load_assignment": {"cluster_name": _DENY_CLUSTER, "endpoints": []},
                },
            ],
        }
    }
    notes = [
        "An Envoy bootstrap: `envoy -c THIS_FILE`. Only the listed ports reach it; CIDR"
        " destinations never match an SNI and are left out.",
        "Portcullis's address checks are not part of this export.",
    ]
    header = "".join(f"# {line}\n" for line in header_lines(spec, FORMAT, notes))
    return header + yaml.safe_dump(config, sort_keys=False, width=100)
