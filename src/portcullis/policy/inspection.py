"""Judging one decrypted registry request against an inspecting rule (docs/semantics.md).

`access: pull` allows GET and HEAD on the ping, and on manifests, blobs, tag
lists and referrers of a matching repository, and token requests whose every
scope is `repository:<matching>:pull`. `access: push` adds uploads, manifest
PUT and the `push` action. Everything else is refused with the reason and a
message a registry client prints: `_catalog`, DELETE, any path no registry
client needs, a scope for another repository or with `delete` or `*`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from portcullis.basics.repositories import RepositoryPattern, parse_repository_pattern
from portcullis.basics.vocabulary import REPORTABLE, Decision, Reason
from portcullis.wire.oci import Endpoint, OciRequest, classify

Access = Literal["pull", "push"]
_READ = frozenset({"GET", "HEAD"})
_READ_ENDPOINTS = frozenset({Endpoint.MANIFEST, Endpoint.BLOB, Endpoint.TAGS,
                             Endpoint.REFERRERS})
_UPLOAD_METHODS = frozenset({"GET", "HEAD", "POST", "PATCH", "PUT", "DELETE"})


@dataclass(frozen=True, slots=True)
class Inspection:
    """A rule's compiled `inspect:` section."""

    patterns: tuple[RepositoryPattern, ...]
    access: Access

    @classmethod
    def compile(cls, repositories: list[str], access: Access) -> Inspection:
        return cls(tuple(parse_repository_pattern(p) for p in repositories), access)

    def allows_repository(self, name: str) -> bool:
        return any(p.matches_repository(name) for p in self.patterns)

    def allows_manifest(self, name: str, tag: str) -> bool:
        return any(p.matches_repository(name) and p.matches_tag(tag) for p in self.patterns)

    @property
    def actions(self) -> frozenset[str]:
        return frozenset({"pull", "push"} if self.access == "push" else {"pull"})


@dataclass(frozen=True, slots=True)
class Judgement:
    allowed: bool
    reason: Reason
    message: str = ""


ALLOWED = Judgement(True, Reason.RULE_ALLOW)


def inspection_for(inspect: Inspection | None, decision: Decision) -> Inspection | None:
    """What a connection decided `decision` by a rule with `inspect` is judged by.

    Only an allowed connection is decrypted: one that report mode lets through
    (a would-deny: an SNI for another name, a missing login) is relayed as the
    name decides, since its refusal may be one a minted leaf could not answer.
    The proxy and `explain` both ask here, so they agree on what is inspected.
    """
    return inspect if decision is Decision.ALLOW else None


def request_decision(judgement: Judgement, report_mode: bool) -> Decision:
    """The decision on one judged request: report mode lets the reportable
    refusals through (REPORT), as admission does for connections."""
    if judgement.allowed:
        return Decision.ALLOW
    return Decision.REPORT if report_mode and judgement.reason in REPORTABLE else Decision.DENY


def _refuse(reason: Reason, message: str) -> Judgement:
    return Judgement(False, reason, message)


def _judge_scopes(rule: Inspection, request: OciRequest) -> Judgement:
    if request.method not in ("GET", "POST"):
        return _refuse(Reason.METHOD_DENIED, f"{request.method} on a token endpoint")
    for scope in request.scopes:
        text = f"{scope.type}:{scope.name}:{','.join(sorted(scope.actions))}"
        if scope.type != "repository":
            return _refuse(Reason.SCOPE_DENIED, f"token scope {text} is not a repository's")
        if not rule.allows_repository(scope.name):
            return _refuse(Reason.SCOPE_DENIED,
                           f"token scope {text}: repository {scope.name} is not allowed")
        extra = scope.actions - rule.actions
        if extra:
            return _refuse(Reason.SCOPE_DENIED,
                           f"token scope {text}: {','.join(sorted(extra))} is not allowed"
                           f" (access: {rule.access})")
    return ALLOWED


def judge(rule: Inspection, request: OciRequest) -> Judgement:
    """Whether `rule` lets `request` through, and if not why, in words a client prints."""
    method, endpoint, name = request.method, request.endpoint, request.repository
    if endpoint is Endpoint.TOKEN:
        return _judge_scopes(rule, request)
    if endpoint is Endpoint.PING:
        return ALLOWED if method in _READ else _refuse(
            Reason.METHOD_DENIED, f"{method} {request.path} is not a registry request")
    if endpoint is Endpoint.CATALOG:
        return _refuse(Reason.PATH_DENIED, "listing the registry's catalog is not allowed")
    if endpoint is Endpoint.OTHER or name is None:
        return _refuse(Reason.PATH_DENIED, f"{request.path} is not a registry API path")
    if not rule.allows_repository(name):
        return _refuse(Reason.REPOSITORY_DENIED, f"repository {name} is not allowed")
    if endpoint is Endpoint.UPLOAD or (endpoint is Endpoint.MANIFEST and method == "PUT"):
        if rule.access != "push" or method not in _UPLOAD_METHODS:
            return _refuse(Reason.METHOD_DENIED,
                           f"pushing to {name} is not allowed (access: {rule.access})")
        return ALLOWED
    if endpoint not in _READ_ENDPOINTS or method not in _READ:
        return _refuse(Reason.METHOD_DENIED, f"{method} on {name} is not allowed"
                                             f" (access: {rule.access})")
    reference = request.reference
    if (endpoint is Endpoint.MANIFEST and reference is not None and not request.by_digest
            and not rule.allows_manifest(name, reference)):
        return _refuse(Reason.REPOSITORY_DENIED, f"tag {name}:{reference} is not allowed")
    return ALLOWED


@dataclass(frozen=True, slots=True)
class RequestExplanation:
    """What `explain --path` adds: how the deciding rule judges one request."""

    method: str
    path: str
    inspected: bool
    judgement: Judgement | None
    repository: str | None = None
    endpoint: str | None = None
    decision: Decision | None = None  # with the judgement: what report mode makes of it

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"method": self.method, "path": self.path,
                                  "inspected": self.inspected}
        if self.judgement is not None:
            out.update(endpoint=self.endpoint, repository=self.repository,
                       allowed=self.judgement.allowed,
                       decision=self.decision.value if self.decision else None,
                       reason=self.judgement.reason.value,
                       message=self.judgement.message or None)
        return out

    def to_text(self) -> str:
        if not self.inspected or self.judgement is None:
            return (f"request  {self.method} {self.path}: not inspected (no allowing rule with"
                    " `inspect:` decides), relayed encrypted as the name decides")
        j = self.judgement
        what = f"{self.endpoint}" + (f" of {self.repository}" if self.repository else "")
        verdict = (self.decision or (Decision.ALLOW if j.allowed else Decision.DENY)).name
        why = f": {j.message}" if j.message else ""
        return (f"request  {self.method} {self.path} ({what})\n"
                f"request  {verdict} (reason: {j.reason.value}){why}")


def explain_request(rule: Inspection | None, method: str, target: str, *,
                    report_mode: bool = False) -> RequestExplanation:
    """Judge `method target` as the proxy would inside an inspected connection
    (`rule`: from `inspection_for`); BadRequest for a target the proxy would answer 400."""
    method = method.upper()
    if rule is None:
        return RequestExplanation(method, target, False, None)
    request = classify(method, target)
    judgement = judge(rule, request)
    return RequestExplanation(method, target, True, judgement, request.repository,
                              request.endpoint.value, request_decision(judgement, report_mode))
