"""Azure Firewall: application rule collections in a Firewall Policy rule
collection group, as an ARM template (`az deployment group create
--template-file FILE --parameters firewallPolicyName=NAME`).

Azure processes rule collections by priority, lowest first, and the first
matching rule decides: each Portcullis rule becomes a collection of its own
with its action, in the policy's order. Azure's `*.example.com` matches
subdomains and not the apex, as Portcullis's does, and a rule names its
sources, protocols and ports, so rules translate one to one. What is not
allowed is denied by Azure Firewall, which is `default: deny`; `default: allow`
would need a rule for every port and is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from portcullis.tools.export.model import ExportSpec
from portcullis.tools.export.refusals import common_problems, refuse_if
from portcullis.tools.export.text import metadata, slug

FORMAT = "azure-firewall"
OPTIONS = {
    "group": "rule collection group name (default: portcullis)",
    "priority": "rule collection group priority, 100-65000 (default: 300)",
}
_FIRST_PRIORITY = 100
_STEP = 10
_LAST_PRIORITY = 65000
_API_VERSION = "2023-09-01"


def render(spec: ExportSpec, options: Mapping[str, str]) -> str:
    problems = common_problems(spec, FORMAT, cidr_destinations=False, default_allow=False)
    priority = options.get("priority", "300")
    if not priority.isdigit() or not 100 <= int(priority) <= _LAST_PRIORITY:
        problems.append(f"priority {priority!r}: write a number from 100 to 65000")
    if _FIRST_PRIORITY + _STEP * len(spec.rules) > _LAST_PRIORITY:
        problems.append(f"{len(spec.rules)} rules do not fit Azure's collection priorities")
    collections: list[dict[str, Any]] = []
    for rule in spec.rules:
        fqdns = [*rule.exact, *(f"*.{w}" for w in rule.wildcards)]
        if not fqdns:
            continue
        name = f"r{rule.index + 1:03d}-{slug(rule.name, limit=70)}"
        protocols = [
            {"protocolType": "Https" if port in spec.tls_ports else "Http", "port": port}
            for port in rule.ports
        ]
        collections.append(
            {
                "ruleCollectionType": "FirewallPolicyFilterRuleCollection",
                "name": name,
                "priority": _FIRST_PRIORITY + _STEP * rule.index,
                "action": {"type": "Allow" if rule.allow else "Deny"},
                "rules": [
                    {
                        "ruleType": "ApplicationRule",
                        "name": name,
                        "description": f"Portcullis rule {rule.name}"[:140],
                        "sourceAddresses": [str(n) for n in rule.networks],
                        "protocols": protocols,
                        "targetFqdns": fqdns,
                    }
                ],
            }
        )
    refuse_if(FORMAT, problems)
    notes = [
        "Azure Firewall denies what no rule allows, as the policy's default does.",
        "Portcullis's address checks are not part of this export.",
    ]
    group = slug(options.get("group", "portcullis"), limit=80)
    template: dict[str, Any] = {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/"
        "deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "metadata": metadata(spec, FORMAT, notes),
        "parameters": {
            "firewallPolicyName": {
                "type": "string",
                "metadata": {"description": "The Firewall Policy to add the rules to"},
            },
            "priority": {"type": "int", "defaultValue": int(priority)},
        },
        "resources": [
            {
                "type": "Microsoft.Network/firewallPolicies/ruleCollectionGroups",
                "apiVersion": _API_VERSION,
                "name": f"[format('{{0}}/{{1}}', parameters('firewallPolicyName'), '{group}')]",
                "properties": {
                    "priority": "[parameters('priority')]",
                    "ruleCollections": collections,
                },
            }
        ],
    }
    return json.dumps(template, indent=2) + "\n"
