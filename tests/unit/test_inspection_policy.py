"""Repository patterns, OCI request classification and judging (issue 14, item 1 and 3)."""

from __future__ import annotations

import pytest

from portcullis.basics.errors import BadRequest, InvalidPattern, PolicyError
from portcullis.basics.repositories import is_repository_name, parse_repository_pattern
from portcullis.basics.vocabulary import Decision, Reason
from portcullis.config import parse_policy
from portcullis.policy.engine import Engine
from portcullis.policy.inspection import (
    Inspection,
    explain_request,
    inspection_for,
    judge,
    request_decision,
)
from portcullis.wire.oci import Endpoint, classify, parse_scope, scopes_of


@pytest.mark.parametrize(("pattern", "name", "tag", "expected"), [
    ("platform/app", "platform/app", None, True),
    ("platform/app", "platform/app2", None, False),
    ("platform/*", "platform/app", None, True),
    ("platform/*", "platform/a/b", None, False),
    ("platform/*", "platform", None, False),
    ("platform/**", "platform/a", None, True),
    ("platform/**", "platform/a/b/c", None, True),
    ("platform/**", "platform", None, False),
    ("platform/**", "platformx/a", None, False),
    ("**", "anything/at/all", None, True),
    ("a/**/z", "a/b/c/z", None, True),
    ("a/**/z", "a/z", None, False),
    ("base/ubi9:*", "base/ubi9", "9.4", True),
    ("base/ubi9:9.*", "base/ubi9", "9.4-1", True),
    ("base/ubi9:9.*", "base/ubi9", "10.0", False),
    ("base/ubi9:latest", "base/ubi9", "latest", True),
    ("base/ubi9:latest", "base/ubi9", "latest2", False),
])
def test_pattern_semantics(pattern: str, name: str, tag: str | None, expected: bool) -> None:
    compiled = parse_repository_pattern(pattern)
    got = compiled.matches_repository(name) and (tag is None or compiled.matches_tag(tag))
    assert got is expected


@pytest.mark.parametrize(("pattern", "says"), [
    ("", "empty"),
    ("plat*/app", "whole path component"),
    ("Platform/app", "not a repository path component"),
    ("platform//app", "empty path component"),
    ("platform/app/", "empty path component"),
    ("platform/app@sha256:ab", "digests are allowed"),
    ("platform/app:bad tag", "tag pattern"),
])
def test_bad_patterns_say_what_to_write(pattern: str, says: str) -> None:
    with pytest.raises(InvalidPattern, match=says):
        parse_repository_pattern(pattern)


def test_repository_names() -> None:
    assert is_repository_name("ns/app-1/x.y__z")
    assert not is_repository_name("NS/app")
    assert not is_repository_name("ns//app")


@pytest.mark.parametrize(("method", "target", "endpoint", "repo", "ref"), [
    ("GET", "/v2/", Endpoint.PING, None, None),
    ("GET", "/v2", Endpoint.PING, None, None),
    ("GET", "/v2/_catalog?n=10", Endpoint.CATALOG, None, None),
    ("GET", "/v2/ns/app/manifests/1", Endpoint.MANIFEST, "ns/app", "1"),
    ("HEAD", "/v2/a/b/c/manifests/sha256:" + "a" * 64, Endpoint.MANIFEST, "a/b/c",
     "sha256:" + "a" * 64),
    ("GET", "/v2/ns/app/blobs/sha256:" + "b" * 64, Endpoint.BLOB, "ns/app", "sha256:" + "b" * 64),
    ("POST", "/v2/ns/app/blobs/uploads/", Endpoint.UPLOAD, "ns/app", None),
    ("PATCH", "/v2/ns/app/blobs/uploads/3f2a-11?_state=x", Endpoint.UPLOAD, "ns/app", None),
    ("GET", "/v2/ns/app/tags/list?n=5", Endpoint.TAGS, "ns/app", None),
    ("GET", "/v2/ns/app/referrers/sha256:" + "c" * 64, Endpoint.REFERRERS, "ns/app",
     "sha256:" + "c" * 64),
    # A repository may have a component named like an endpoint.
    ("GET", "/v2/ns/blobs/manifests/1", Endpoint.MANIFEST, "ns/blobs", "1"),
    ("GET", "/v2/ns/app/other", Endpoint.OTHER, None, None),
    ("GET", "/oauth/token?service=registry&scope=repository:ns/app:pull", Endpoint.TOKEN,
     None, None),
    ("GET", "/index.html", Endpoint.OTHER, None, None),
])
def test_classify(method: str, target: str, endpoint: Endpoint, repo: str | None,
                  ref: str | None) -> None:
    request = classify(method, target)
    assert (request.endpoint, request.repository, request.reference) == (endpoint, repo, ref)


@pytest.mark.parametrize("target", [
    "/v2/ns/%61pp/manifests/1", "/v2/ns/../other/manifests/1", "/v2/ns//app/manifests/1",
    "http://us.icr.io/v2/", "/v2/ns\\app/manifests/1", "/v2/NS/app/manifests/1",
])
def test_ambiguous_targets_are_bad_requests(target: str) -> None:
    with pytest.raises(BadRequest) as caught:
        classify("GET", target)
    assert caught.value.status == 400


def test_scopes() -> None:
    scope = parse_scope("repository:us.icr.io:5000/ns/app:pull,push")
    assert (scope.type, scope.name, scope.actions) == ("repository", "us.icr.io:5000/ns/app",
                                                       frozenset({"pull", "push"}))
    both = scopes_of("scope=repository:a/b:pull%20repository:c/d:push&scope=registry:catalog:*")
    assert [s.name for s in both] == ["a/b", "c/d", "catalog"]
    with pytest.raises(BadRequest):
        parse_scope("repository")


PULL = Inspection.compile(["ns/small", "platform/**", "base/ubi9:9.*"], "pull")
PUSH = Inspection.compile(["ns/small"], "push")
DIGEST = "sha256:" + "d" * 64


@pytest.mark.parametrize(("rule", "method", "target", "reason"), [
    (PULL, "GET", "/v2/", Reason.RULE_ALLOW),
    (PULL, "GET", "/v2/ns/small/manifests/1", Reason.RULE_ALLOW),
    (PULL, "HEAD", "/v2/platform/a/b/manifests/latest", Reason.RULE_ALLOW),
    (PULL, "GET", f"/v2/ns/small/blobs/{DIGEST}", Reason.RULE_ALLOW),
    (PULL, "GET", "/v2/ns/small/tags/list", Reason.RULE_ALLOW),
    (PULL, "GET", f"/v2/ns/small/referrers/{DIGEST}", Reason.RULE_ALLOW),
    (PULL, "GET", "/v2/base/ubi9/manifests/9.4", Reason.RULE_ALLOW),
    (PULL, "GET", f"/v2/base/ubi9/manifests/{DIGEST}", Reason.RULE_ALLOW),
    (PULL, "GET", "/v2/base/ubi9/manifests/8.10", Reason.REPOSITORY_DENIED),
    (PULL, "GET", "/v2/ns/app/manifests/1", Reason.REPOSITORY_DENIED),
    (PULL, "GET", f"/v2/ns/app/blobs/{DIGEST}", Reason.REPOSITORY_DENIED),
    (PULL, "POST", "/v2/ns/small/blobs/uploads/", Reason.METHOD_DENIED),
    (PULL, "PUT", "/v2/ns/small/manifests/2", Reason.METHOD_DENIED),
    (PULL, "DELETE", f"/v2/ns/small/manifests/{DIGEST}", Reason.METHOD_DENIED),
    (PULL, "POST", "/v2/", Reason.METHOD_DENIED),
    (PULL, "GET", "/v2/_catalog", Reason.PATH_DENIED),
    (PULL, "GET", "/v2/ns/small/whatever", Reason.PATH_DENIED),
    (PULL, "GET", "/robots.txt", Reason.PATH_DENIED),
    (PULL, "GET", "/token?scope=repository:ns/small:pull", Reason.RULE_ALLOW),
    (PULL, "GET", "/token?service=x", Reason.RULE_ALLOW),
    (PULL, "GET", "/token?scope=repository:ns/small:pull,push", Reason.SCOPE_DENIED),
    (PULL, "GET", "/token?scope=repository:ns/small:delete", Reason.SCOPE_DENIED),
    (PULL, "GET", "/token?scope=repository:ns/small:*", Reason.SCOPE_DENIED),
    (PULL, "GET", "/token?scope=repository:ns/app:pull", Reason.SCOPE_DENIED),
    (PULL, "GET", "/token?scope=registry:catalog:*", Reason.SCOPE_DENIED),
    (PULL, "PUT", "/token?scope=repository:ns/small:pull", Reason.METHOD_DENIED),
    (PUSH, "POST", "/v2/ns/small/blobs/uploads/", Reason.RULE_ALLOW),
    (PUSH, "PUT", "/v2/ns/small/manifests/2", Reason.RULE_ALLOW),
    (PUSH, "DELETE", f"/v2/ns/small/manifests/{DIGEST}", Reason.METHOD_DENIED),
    (PUSH, "POST", "/v2/ns/app/blobs/uploads/", Reason.REPOSITORY_DENIED),
    (PUSH, "GET", "/token?scope=repository:ns/small:pull,push", Reason.RULE_ALLOW),
    (PUSH, "GET", "/token?scope=repository:ns/small:delete", Reason.SCOPE_DENIED),
])
def test_judge(rule: Inspection, method: str, target: str, reason: Reason) -> None:
    judgement = judge(rule, classify(method, target))
    assert judgement.reason is reason
    assert judgement.allowed is (reason is Reason.RULE_ALLOW)
    if not judgement.allowed:
        assert judgement.message


POLICY = """\
version: 1
sources: {{workers: [10.0.0.0/8]}}
rules:
  - name: platform
    from: [workers]
    to: [us.icr.io]
    inspect:
      repositories: {repositories}
      access: pull
{tls}"""
TLS = "tls_inspection: {ca_cert: /etc/p/ca.pem, ca_key: /etc/p/ca-key.pem}\n"


def test_policy_compiles_the_inspection_onto_its_rule() -> None:
    engine = Engine(parse_policy(POLICY.format(repositories='["platform/**"]', tls=TLS)))
    inspection = engine.rules[0].inspect
    assert inspection is not None and inspection.access == "pull"
    assert inspection.allows_repository("platform/x")


@pytest.mark.parametrize(("repositories", "tls", "says"), [
    ('["platform/**", "x*"]', TLS, "p.yaml:8: rules[0].inspect.repositories[1]: repository"),
    ("[]", TLS, "p.yaml:8: rules[0].inspect.repositories: List should have at least 1"),
    ('["platform/**"]', "", "needs a `tls_inspection:` section"),
])
def test_policy_errors_name_the_line(repositories: str, tls: str, says: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(POLICY.format(repositories=repositories, tls=tls), "p.yaml")
    assert says in str(caught.value)


def test_only_an_allowed_connection_is_inspected() -> None:
    rule = Inspection.compile(["ns/small"], "pull")
    assert inspection_for(rule, Decision.ALLOW) is rule
    # Report mode's would-deny (an SNI for another name) is relayed as the name decides.
    assert inspection_for(rule, Decision.REPORT) is None
    assert inspection_for(None, Decision.ALLOW) is None


@pytest.mark.parametrize(("target", "report_mode", "decision"), [
    ("/v2/ns/small/manifests/1", False, Decision.ALLOW),
    ("/v2/ns/app/manifests/1", False, Decision.DENY),
    ("/v2/ns/app/manifests/1", True, Decision.REPORT),
    ("/v2/_catalog", True, Decision.REPORT),
])
def test_explain_and_the_session_share_what_report_mode_makes_of_a_request(
    target: str, report_mode: bool, decision: Decision
) -> None:
    rule = Inspection.compile(["ns/small"], "pull")
    explained = explain_request(rule, "GET", target, report_mode=report_mode)
    assert explained.decision is decision
    assert request_decision(judge(rule, classify("GET", target)), report_mode) is decision
    assert explained.to_dict()["decision"] == decision.value
    assert f"request  {decision.name} " in explained.to_text()
