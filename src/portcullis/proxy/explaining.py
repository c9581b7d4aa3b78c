"""`explain` on the admission path: `portcullis explain` and admin `/explain`.

It runs `admission.prepare` (decide, the SNI check when an SNI is given,
resolve, check each address) on a throwaway Attempt and stops before the
dial, so what it answers is what a connection would meet.
"""

from __future__ import annotations

import contextlib
import ipaddress
from typing import Any

from portcullis.basics.errors import AuthorityError, Refusal
from portcullis.basics.ip import IPAddress
from portcullis.basics.vocabulary import Mode
from portcullis.policy.engine import Verdict
from portcullis.policy.explain import Explanation, explain
from portcullis.proxy.admission import prepare
from portcullis.proxy.attempt import Attempt
from portcullis.proxy.gate import Gate
from portcullis.wire.authority import parse_authority


async def explain_target(
    gate: Gate, client: IPAddress, target: str, *, sni: str | None = None, resolve: bool = True,
    identity: str | None = None,
) -> Explanation:
    """Raises AuthorityError for a target that is not `host[:port]`. `identity`: as
    if the client had proven it."""
    authority = parse_authority(target, 443, "target")
    result = explain(gate.engine, client, authority.host, authority.port, is_ip=authority.is_ip,
                     identity=identity)
    attempt = Attempt(Mode.EXPLICIT, str(client), 0, "explain", identity=identity)
    hello = (sni, False) if sni is not None else None
    with contextlib.suppress(Refusal):  # the refusal is on `attempt`
        await prepare(gate, attempt, authority, hello=hello, resolve=resolve)
    result.verdict = Verdict(attempt.decision, attempt.reason, attempt.matched)
    if attempt.allowed:
        result.parent = attempt.parent
    checked = attempt.checked
    if checked is None:
        return result
    if checked.failure is not None:
        result.resolution = {"error": str(checked.failure), "kind": checked.failure.kind}
        return result
    resolution: dict[str, Any] = {"source": checked.source}
    if checked.source != "literal":
        resolution["cnames"] = list(checked.cnames)
    result.resolution = {
        **resolution,
        "addresses": [str(v.address) for v in checked.verdicts],
        "checks": [
            {"address": str(v.address), "class": v.klass.value, "allowed": v.allowed,
             "why": v.why}
            for v in checked.verdicts
        ],
    }
    return result


async def explain_for_admin(
    gate: Gate, source: str, target: str, sni: str | None = None
) -> tuple[int, Any]:
    try:
        client = ipaddress.ip_address(source)
        result = await explain_target(gate, client, target, sni=sni)
    except (ValueError, AuthorityError) as exc:
        return 400, {"error": str(exc)}
    return 200, result.to_dict()


