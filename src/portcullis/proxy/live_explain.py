"""`explain` with the live parts: the decision, then the resolution and a verdict
per address, exactly as a connection would meet them (admin `/explain` and
`portcullis explain`)."""

from __future__ import annotations

import ipaddress
from typing import Any

from portcullis.config import IPAddress
from portcullis.net.addresses import check_addresses
from portcullis.net.resolver import DnsFailure
from portcullis.policy.decisions import Reason
from portcullis.policy.explain import Explanation, explain
from portcullis.proxy.state import FirewallState
from portcullis.proxy.upstream import address_refusal, vouched_ranges
from portcullis.wire.authority import AuthorityError, parse_authority


async def explain_live(
    state: FirewallState, client: IPAddress, target: str, *, resolve: bool = True
) -> Explanation:
    """Raises AuthorityError for a target that is not `host[:port]`."""
    authority = parse_authority(target, 443, "target")
    engine = state.engine
    result = explain(engine, client, authority.host, authority.port, is_ip=authority.is_ip)
    if not resolve or not result.verdict.allowed:
        return result
    addresses: tuple[IPAddress, ...]
    resolution: dict[str, Any]
    if authority.is_ip:
        addresses = (ipaddress.ip_address(authority.host),)
        resolution = {"source": "literal"}
    else:
        try:
            answer = await state.resolver.resolve(authority.host)
        except DnsFailure as exc:
            result.resolution = {"error": str(exc), "kind": exc.kind}
            result.verdict = engine.refuse(Reason.DNS_FAILURE, result.verdict.rule)
            return result
        addresses = answer.addresses
        resolution = {"source": answer.source, "cnames": list(answer.cnames)}
    checks = check_addresses(
        addresses,
        allow_ranges=state.policy.resolver.allow_ranges,
        resolves_to=vouched_ranges(result.verdict, authority.is_ip),
        own=state.own,
    )
    resolution["addresses"] = [str(a) for a in addresses]
    resolution["checks"] = [
        {"address": str(c.address), "class": c.klass.value, "allowed": c.allowed, "why": c.why}
        for c in checks
    ]
    result.resolution = resolution
    reason = address_refusal(checks)
    if reason is not None:
        result.verdict = engine.refuse(reason, result.verdict.rule)
    return result


async def explain_for_admin(state: FirewallState, source: str, target: str) -> tuple[int, Any]:
    try:
        client = ipaddress.ip_address(source)
        result = await explain_live(state, client, target)
    except (ValueError, AuthorityError) as exc:
        return 400, {"error": str(exc)}
    return 200, result.to_dict()
