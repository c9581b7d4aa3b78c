"""Calico: a GlobalNetworkPolicy whose egress rules allow the policy's names
(`destination.domains`, Calico Enterprise and Calico Cloud) from its sources.

Calico evaluates a policy's rules in order, and its `*.example.com` matches one
or more labels and not the apex, as Portcullis's does. But domains only work
in Allow rules, so the allowed names are computed first (tables.decided_set)
and a denial carved out of an allowed wildcard is refused. Sources become
`source.nets`: blocks go from the most specific prefix to the least, each
ending in a Deny for its nets, so a client gets the rules of its longest
matching source CIDR (Portcullis's groups) and never those of a wider one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from portcullis.basics.ip import IPNetwork
from portcullis.tools.export.model import ExportSpec
from portcullis.tools.export.refusals import common_problems, refuse_if
from portcullis.tools.export.tables import (
    NameSet,
    applicable,
    decided_set,
    name_table,
    source_classes,
)
from portcullis.tools.export.text import header_lines

FORMAT = "calico"
OPTIONS = {
    "selector": "endpoints the policy applies to (default: has(portcullis.io/registry-egress))",
    "name": "metadata.name (default: portcullis)",
    "order": "spec.order (default: 100)",
}

_DNS_DESTINATION = {
    "selector": "k8s-app == 'kube-dns'",
    "namespaceSelector": "projectcalico.org/name == 'kube-system'",
    "ports": [53],
}


def render(spec: ExportSpec, options: Mapping[str, str]) -> str:
    problems = common_problems(spec, FORMAT, cidr_destinations=False, default_allow=False)
    order = options.get("order", "100")
    if not order.isdigit():
        problems.append(f"order {order!r}: write a number")
    egress: list[dict[str, Any]] = [
        {"action": "Allow", "protocol": protocol, "destination": dict(_DNS_DESTINATION)}
        for protocol in ("UDP", "TCP")
    ]
    blocks: dict[tuple[int, frozenset[str]], list[IPNetwork]] = {}
    for cls in source_classes(spec):
        for network in cls.networks:
            blocks.setdefault((network.prefixlen, cls.groups), []).append(network)
    for (_, groups), nets in sorted(blocks.items(), key=lambda item: -item[0][0]):
        source = {"nets": [str(n) for n in nets]}
        by_names: dict[NameSet, list[int]] = {}
        for port in spec.ports():
            table = name_table(applicable(spec, groups, port))
            allowed = decided_set(
                table, default_allow=False, want_allow=True, fmt=FORMAT, problems=problems
            )
            if allowed:
                by_names.setdefault(allowed, []).append(port)
        for names, ports in by_names.items():
            egress.append(
                {
                    "action": "Allow",
                    "protocol": "TCP",
                    "source": dict(source),
                    "destination": {"domains": names.patterns(), "ports": ports},
                }
            )
        egress.append({"action": "Deny", "source": dict(source)})
    # Clients in no source group: the default, deny.
    egress.append({"action": "Deny"})
    refuse_if(FORMAT, problems)
    document = {
        "apiVersion": "projectcalico.org/v3",
        "kind": "GlobalNetworkPolicy",
        "metadata": {
            "name": options.get("name", "portcullis"),
            "annotations": {
                "portcullis.io/source": spec.origin,
                "portcullis.io/source-sha256": spec.sha256,
                "portcullis.io/generated": spec.generated,
            },
        },
        "spec": {
            "order": int(order),
            "selector": options.get("selector", "has(portcullis.io/registry-egress)"),
            "types": ["Egress"],
            "egress": egress,
        },
    }
    notes = [
        "destination.domains needs Calico Enterprise or Calico Cloud.",
        "Selected endpoints may reach the listed names and kube-dns, nothing else.",
        "Portcullis's address checks are not part of this export.",
    ]
    header = "".join(f"# {line}\n" for line in header_lines(spec, FORMAT, notes))
    return header + yaml.safe_dump(document, sort_keys=False, width=100)
