"""What a judged OCI request must satisfy, whatever the target: shared by the
property tests and the atheris harness of wire/oci.py and policy/inspection.py."""

from __future__ import annotations

from portcullis.basics.repositories import is_repository_name
from portcullis.policy.inspection import Inspection, judge
from portcullis.wire.oci import Endpoint, OciRequest

RULE = Inspection.compile(["platform/**", "base/ubi9:9.*"], "pull")


def check_judged(request: OciRequest, rule: Inspection = RULE) -> None:
    """A pull-only rule allows nothing it does not name, and no write."""
    judgement = judge(rule, request)
    if not judgement.allowed:
        assert judgement.message, "a refusal without a message"
        return
    method = request.method
    if request.endpoint is Endpoint.PING:
        assert method in ("GET", "HEAD")
    elif request.endpoint is Endpoint.TOKEN:
        assert all(s.type == "repository" and s.actions <= {"pull"}
                   and rule.allows_repository(s.name) for s in request.scopes)
    else:
        assert method in ("GET", "HEAD")
        assert request.repository is not None and rule.allows_repository(request.repository)
        assert is_repository_name(request.repository)
