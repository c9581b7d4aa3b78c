"""`explain` on the admission path: `portcullis explain` and admin `/explain`.

It runs `admission.prepare` (decide, the SNI check when an SNI is given,
resolve, check each address) on a throwaway Attempt and stops before the
dial, so what it answers is what a connection would meet; with `path`, the
deciding rule's inspection judges that one registry request. `answer` is the
one path both fronts take (observe/explain_query.py checks their parameters).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from portcullis.basics.errors import AuthorityError, BadParameter, Refusal
from portcullis.basics.ip import IPAddress
from portcullis.basics.vocabulary import Decision, Mode
from portcullis.observe.explain_query import ExplainQuery, query_error
from portcullis.policy.engine import Verdict
from portcullis.policy.explain import Explanation, explain
from portcullis.policy.inspection import explain_request, inspection_for
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


@dataclass(frozen=True, slots=True)
class ExplainAnswer:
    """One answer for both fronts: whether the connection (and the request, with
    `path`) would go on, the JSON form and the text form."""

    allowed: bool
    payload: dict[str, Any]
    text: str


async def answer(gate: Gate, query: ExplainQuery, *, resolve: bool = True) -> ExplainAnswer:
    """`explain_target`, then the request judged as the deciding rule's inspection
    would; BadParameter for a target that is not `host[:port]`."""
    try:
        result = await explain_target(gate, query.source, query.target, sni=query.sni,
                                      resolve=resolve, identity=query.identity)
    except AuthorityError as exc:
        raise BadParameter("to", f"is refused: {exc}") from None
    allowed, payload, text = result.verdict.allowed, result.to_dict(), result.to_text()
    if query.path is not None:
        rule = result.verdict.rule
        # `ExplainQuery.of` classified the path already: no BadRequest here.
        judged = explain_request(
            inspection_for(rule.inspect if rule else None, result.verdict.decision),
            query.method, query.path, report_mode=gate.report_mode)
        payload["request"] = judged.to_dict()
        text += "\n" + judged.to_text()
        allowed = allowed and judged.decision is not Decision.DENY
    return ExplainAnswer(allowed, payload, text)


async def explain_for_admin(gate: Gate, query: ExplainQuery) -> tuple[int, Any]:
    try:
        return 200, (await answer(gate, query)).payload
    except BadParameter as exc:
        return 400, {"error": query_error(exc)}
