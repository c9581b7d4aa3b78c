"""The one-screen summary `portcullis serve` prints at start: where it listens
and what it allows, so an operator sees at once whether the policy is the one
they meant."""

from __future__ import annotations

from collections.abc import Mapping

from portcullis.config import Policy
from portcullis.config.access import Quota
from portcullis.policy.engine import Engine

_SHOWN = 8


def quota_text(quota: Quota) -> str:
    parts = []
    if quota.max_tunnels is not None:
        parts.append(f"{quota.max_tunnels} tunnels")
    if quota.rate is not None:
        burst = f" (burst {quota.burst})" if quota.burst is not None else ""
        parts.append(f"{quota.rate:g} new/s{burst}")
    return ", ".join(parts) + (" each member" if quota.per == "member" else "")


def policy_summary(policy: Policy, engine: Engine, listening: Mapping[str, str]) -> str:
    lines = ["portcullis is running"]
    for mode, address in listening.items():
        hints = {"explicit": f"  (HTTPS_PROXY=http://{address})",
                 "admin": "  (/metrics /healthz /readyz /explain)"}
        hint = hints.get(mode, "")
        lines.append(f"  {mode:<12} {address}{hint}")
    lines.append(f"mode {policy.mode}, default {policy.default}")
    for mode in ("explicit", "transparent"):
        balancers = getattr(policy.listen.proxy_protocol, mode)
        if balancers is not None:
            lines.append(f"{mode} behind PROXY protocol balancers:"
                         f" {', '.join(str(n) for n in balancers.from_)}")
    if policy.upstream_proxy is not None:
        lines.append(f"parent proxy {policy.upstream_proxy} (rules may override it)")
    for group, networks in policy.sources.items():
        lines.append(f"source {group}: {', '.join(str(n) for n in networks)}")
    for group, identities in policy.identities.items():
        where = f" from {', '.join(identities.from_)}" if identities.from_ else ""
        lines.append(f"identities {group}: {', '.join(identities.names)}{where}")
    for group, quota in policy.quotas.items():
        lines.append(f"quota {group}: {quota_text(quota)}")
    for rule in engine.rules:
        ports = ",".join(str(p) for p in sorted(rule.ports))
        shown = ", ".join(rule.destinations[:_SHOWN])
        more = len(rule.destinations) - _SHOWN
        tail = f", ... (+{more} more)" if more > 0 else ""
        lines.append(
            f"rule {rule.name}: {rule.action.value} {', '.join(sorted(rule.groups))}"
            f" -> port {ports}: {shown}{tail}"
        )
    lines.append(f"everything else: {policy.default}")
    return "\n".join(lines)
