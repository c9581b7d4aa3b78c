"""Property tests of OCI request classification and judging: whatever the target,
the only outcomes are an OciRequest or a BadRequest (400), and a judgement never
allows a request for a repository the rule does not name."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.oci_checks import check_judged

from portcullis.basics.errors import BadRequest
from portcullis.wire.oci import classify

FUZZ = settings(max_examples=500, deadline=None)
METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
PIECES = st.sampled_from(["v2", "platform", "app", "manifests", "blobs", "uploads", "tags",
                          "list", "referrers", "_catalog", "..", ".", "", "%2e", "PLATFORM",
                          "sha256:" + "a" * 64, "9.4", "base", "ubi9", "token", "?scope=",
                          "repository:platform/a:pull", "x/../platform"])


@FUZZ
@given(METHODS, st.text(max_size=200))
def test_any_target_is_classified_or_a_400(method: str, target: str) -> None:
    try:
        request = classify(method, target)
    except BadRequest as exc:
        assert exc.status == 400
        return
    assert request.method == method


@FUZZ
@given(METHODS, st.lists(PIECES, max_size=8))
def test_nothing_outside_the_rule_is_allowed(method: str, pieces: list[str]) -> None:
    target = "/" + "/".join(pieces)
    try:
        request = classify(method, target)
    except BadRequest:
        return
    check_judged(request)
