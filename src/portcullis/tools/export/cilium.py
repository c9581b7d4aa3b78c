"""Cilium: one CiliumNetworkPolicy per source group, with `toFQDNs` for the
allowed names and the DNS rule that lets Cilium's DNS proxy learn their addresses.

Kubernetes pods have no fixed CIDRs, so a source group becomes a label:
pods labelled `portcullis.io/source-group: GROUP` get that group's rules.
toFQDNs can only allow, so deny rules and rule order are honoured by
computing the allowed names first (tables.decided_set); a denial carved out of
an allowed wildcard cannot be listed and is refused.

Wildcards: Cilium's `matchPattern: "*.example.com"` matches exactly one label.
Portcullis's `*.example.com` (one or more labels) is `"**.example.com"`, which
Cilium accepts from 1.19 on (cilium/cilium#43420). For older Cilium
(`--option cilium-version=1.18`) a wildcard is refused rather than narrowed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

from portcullis.tools.export.model import ExportSpec
from portcullis.tools.export.refusals import common_problems, refuse_if
from portcullis.tools.export.tables import NameSet, applicable, decided_set, name_table
from portcullis.tools.export.text import header_lines, slug

FORMAT = "cilium"
OPTIONS = {
    "cilium-version": "oldest Cilium the policy must work on, e.g. 1.18 (default 1.19;"
    " before 1.19 multi-label wildcards are refused)",
    "namespace": "metadata.namespace of the policies (default: none, kubectl's)",
}
LABEL = "portcullis.io/source-group"
_MULTI_LEVEL_SINCE = (1, 19)
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")

_DNS_RULE: dict[str, Any] = {
    "toEndpoints": [
        {
            "matchLabels": {
                "k8s:io.kubernetes.pod.namespace": "kube-system",
                "k8s:k8s-app": "kube-dns",
            }
        }
    ],
    "toPorts": [
        {
            "ports": [{"port": "53", "protocol": "ANY"}],
            # Every lookup is visible to the proxy; what is reachable is decided
            # by toFQDNs below, and CNAME chains resolve without surprises.
            "rules": {"dns": [{"matchPattern": "*"}]},
        }
    ],
}


def _version(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?", text.strip())
    if match is None:
        raise ValueError(text)
    return int(match.group(1)), int(match.group(2))


def _selectors(names: NameSet) -> list[dict[str, str]]:
    return [
        *({"matchName": n} for n in names.exact),
        *({"matchPattern": f"**.{w}"} for w in names.wildcards),
    ]


def render(spec: ExportSpec, options: Mapping[str, str]) -> str:
    problems = common_problems(spec, FORMAT, cidr_destinations=False, default_allow=False)
    try:
        version = _version(options.get("cilium-version", "1.19"))
    except ValueError:
        problems.append(f"cilium-version {options['cilium-version']!r}: write it as 1.18")
        version = _MULTI_LEVEL_SINCE
    documents: list[dict[str, Any]] = []
    for group in sorted(spec.groups):
        if not _LABEL_VALUE.match(group):
            problems.append(
                f"source group {group!r} is not a valid label value for {LABEL};"
                " name the group with letters, digits, '-', '_' or '.'"
            )
            continue
        egress: list[dict[str, Any]] = [_DNS_RULE]
        by_names: dict[NameSet, list[int]] = {}
        for port in spec.ports():
            table = name_table(applicable(spec, frozenset({group}), port))
            allowed = decided_set(
                table, default_allow=False, want_allow=True, fmt=FORMAT, problems=problems
            )
            if allowed:
                by_names.setdefault(allowed, []).append(port)
        for names, ports in by_names.items():
            if names.wildcards and version < _MULTI_LEVEL_SINCE:
                wild = ", ".join(f"*.{w}" for w in names.wildcards)
                problems.append(
                    f"{wild} match one or more labels; Cilium before 1.19 has only"
                    " matchPattern '*.', which matches exactly one, and '**.' arrives in"
                    " 1.19. List the names, or export with --option cilium-version=1.19"
                )
            egress.append(
                {
                    "toFQDNs": _selectors(names),
                    "toPorts": [{"ports": [{"port": str(p), "protocol": "TCP"} for p in ports]}],
                }
            )
        metadata: dict[str, Any] = {
            "name": f"portcullis-{slug(group, limit=200)}",
            "annotations": {
                "portcullis.io/source": spec.origin,
                "portcullis.io/source-sha256": spec.sha256,
                "portcullis.io/generated": spec.generated,
            },
        }
        if "namespace" in options:
            metadata["namespace"] = options["namespace"]
        documents.append(
            {
                "apiVersion": "cilium.io/v2",
                "kind": "CiliumNetworkPolicy",
                "metadata": metadata,
                "spec": {
                    "description": f"Portcullis source group {group}: registry egress only",
                    "endpointSelector": {"matchLabels": {LABEL: group}},
                    "egress": egress,
                },
            }
        )
    policy_names = [d["metadata"]["name"] for d in documents]
    if len(set(policy_names)) != len(policy_names):
        problems.append("two source groups give the same policy name; rename one of them")
    refuse_if(FORMAT, problems)
    notes = [
        f"One policy per source group; label pods {LABEL}=GROUP to put them in it.",
        "Selected pods may reach the listed names and kube-dns, nothing else;"
        " unlabelled pods are not affected.",
        "Portcullis's address checks are not part of this export.",
    ]
    header = "".join(f"# {line}\n" for line in header_lines(spec, FORMAT, notes))
    return header + yaml.safe_dump_all(documents, sort_keys=False, width=100)
