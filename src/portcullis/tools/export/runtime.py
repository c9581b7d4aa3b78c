"""What Portcullis does at run time that no export writes: `inspect:`, a parent
proxy (`upstream_proxy`), PROXY protocol on a listener, quotas
(docs/decisions.md, "What an export leaves out").

Each is refused where the exported firewall would let through what Portcullis
refuses, or would break the traffic it stands in; it is a warning on stderr
where only the route or a resource limit differs and every decision is the same.
The proxies (squid, nginx, haproxy, envoy) stand where Portcullis stands: in
the connection, behind the same balancer, dialling out. The network firewalls
(cilium, calico, AWS, Azure) filter the clients' own packets: they see the real
clients and dial nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from portcullis.basics.errors import ExportRefused
from portcullis.config import Policy
from portcullis.config.chaining import rule_parent

PROXIES = frozenset({"squid", "nginx", "haproxy", "envoy"})


class Kind(StrEnum):
    INSPECT = "inspect"
    PARENT = "upstream_proxy"
    PROXY_PROTOCOL = "proxy_protocol"
    QUOTA = "quotas"


@dataclass(frozen=True, slots=True)
class RuntimeFeature:
    kind: Kind
    field: str  # where the policy says it: `rule 'images' inspect`, `quotas.workers`
    detail: str  # what it does, in the policy's words


def features_of(policy: Policy) -> tuple[RuntimeFeature, ...]:
    found: list[RuntimeFeature] = []
    for rule in policy.rules:
        if rule.inspect is not None:
            found.append(RuntimeFeature(
                Kind.INSPECT, f"rule {rule.name!r} inspect",
                f"only repositories {', '.join(rule.inspect.repositories)}"
                f" ({rule.inspect.access}) on {', '.join(str(d) for d in rule.to)}"))
    chained: dict[tuple[str, str], list[str]] = {}  # (field, parent): rules
    for rule in policy.rules:
        parent = rule_parent(rule.upstream_proxy, policy.upstream_proxy)
        if rule.action == "allow" and parent is not None:
            where = "upstream_proxy" if rule.upstream_proxy is None else \
                f"rule {rule.name!r} upstream_proxy"
            chained.setdefault((where, str(parent)), []).append(repr(rule.name))
    found.extend(RuntimeFeature(Kind.PARENT, where, f"rule{'s' if len(rules) > 1 else ''}"
                                f" {', '.join(rules)} go{'' if len(rules) > 1 else 'es'}"
                                f" through {parent}")
                 for (where, parent), rules in chained.items())
    for listener in ("explicit", "transparent"):
        pp = getattr(policy.listen.proxy_protocol, listener)
        if pp is not None:
            found.append(RuntimeFeature(
                Kind.PROXY_PROTOCOL, f"listen.proxy_protocol.{listener}",
                f"clients arrive through {', '.join(str(n) for n in pp.from_)}"))
    for group, quota in policy.quotas.items():
        limits = [f"max_tunnels {quota.max_tunnels}" if quota.max_tunnels else "",
                  f"rate {quota.rate:g}/s" if quota.rate else ""]
        found.append(RuntimeFeature(Kind.QUOTA, f"quotas.{group}",
                                    " and ".join(x for x in limits if x)))
    return tuple(found)


def _refused(fmt: str, f: RuntimeFeature) -> str | None:
    if f.kind is Kind.INSPECT:
        return (f"{f.field}: Portcullis decrypts and judges each request ({f.detail});"
                f" {fmt} decides by name and would allow every repository there. Remove"
                " `inspect:` to export the rule by name alone")
    if fmt not in PROXIES:
        return None
    if f.kind is Kind.PARENT:
        return (f"{f.field}: {f.detail}; {fmt} would dial the names itself, around the"
                f" parent. Export a policy without upstream_proxy and chain {fmt} to the"
                " parent yourself")
    if f.kind is Kind.PROXY_PROTOCOL:
        return (f"{f.field}: {f.detail}, each connection opening with a PROXY protocol"
                f" header; {fmt} as exported would read the header as a request and see"
                " the balancer as every client. Export without proxy_protocol and set it"
                f" in {fmt} yourself")
    return None


def _warning(fmt: str, f: RuntimeFeature) -> str:
    if f.kind is Kind.QUOTA:
        return (f"{f.field} ({f.detail}) is not exported: {fmt} gets no such limit, so one"
                " client can take what Portcullis would share")
    if f.kind is Kind.PARENT:
        return (f"{f.field} is not exported ({f.detail}): these {fmt} rules let the clients"
                " reach the names directly")
    return (f"{f.field} is not exported ({f.detail}): these {fmt} rules match the clients'"
            " own addresses; apply them where those are seen")


def refuse_runtime(fmt: str, features: tuple[RuntimeFeature, ...]) -> None:
    problems = [p for f in features if (p := _refused(fmt, f)) is not None]
    if problems:
        raise ExportRefused(fmt, list(dict.fromkeys(problems)))


def runtime_warnings(fmt: str, features: tuple[RuntimeFeature, ...]) -> list[str]:
    """What the export leaves out without changing a decision; for stderr."""
    return [f"warning: {_warning(fmt, f)}" for f in features if _refused(fmt, f) is None]
