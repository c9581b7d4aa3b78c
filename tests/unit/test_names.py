"""Names and patterns: docs/semantics.md §1, table-tested, plus the wildcard property."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from portcullis.basics.errors import InvalidName, InvalidPattern
from portcullis.basics.names import normalize_name, parent_suffixes, parse_pattern


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("us.icr.io", "us.icr.io"),
        ("US.ICR.IO", "us.icr.io"),
        ("us.icr.io.", "us.icr.io"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example.", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a" * 63 + ".io", "a" * 63 + ".io"),
        (".".join(["a" * 61] * 4), ".".join(["a" * 61] * 4)),  # 247 characters
        ("_dmarc.example.com", "_dmarc.example.com"),
    ],
)
def test_normalize_accepts(raw: str, expected: str) -> None:
    assert normalize_name(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "empty"),
        (".", "no labels"),
        ("a..b", "empty label"),
        ("us.icr.io..", "empty label"),
        (".us.icr.io", "empty label"),
        ("a" * 64 + ".io", "label of 64 characters"),
        (".".join(["a" * 63] * 4) + ".ab", "characters long"),
        ("-bad.example", "invalid label"),
        ("bad-.example", "invalid label"),
        ("sp ace.example", "invalid label"),
        ("per%63ent.example", "invalid label"),
        ("user@host.example", "invalid label"),
        ("exa\x00mple.com", "invalid label"),
    ],
)
def test_normalize_refuses(raw: str, message: str) -> None:
    with pytest.raises(InvalidName, match=message):
        normalize_name(raw)


@pytest.mark.parametrize(
    ("raw", "suffix", "wildcard"),
    [
        ("icr.io", "icr.io", False),
        ("*.icr.io", "icr.io", True),
        ("*.ICR.io.", "icr.io", True),
        ("*.ibm-zh.com", "ibm-zh.com", True),
        ("*.bücher.example", "xn--bcher-kva.example", True),
        # Private-section suffixes are registrable domains for our purpose.
        ("*.githubusercontent.com", "githubusercontent.com", True),
    ],
)
def test_pattern_accepts(raw: str, suffix: str, wildcard: bool) -> None:
    pattern = parse_pattern(raw)
    assert (pattern.suffix, pattern.wildcard) == (suffix, wildcard)


@pytest.mark.parametrize(
    ("raw", "advice"),
    [
        ("*", "would match every name"),
        ("*.", "would match every name"),
        ("a.*.com", r"only '\*\.domain' is supported"),
        ("*foo.com", r"write '\*\.foo\.com'"),
        (".example.com", r"write 'example\.com' for the name itself and '\*\.example\.com'"),
        ("10.1.2.3", r"use a CIDR destination such as '10\.1\.2\.3/32'"),
        ("::1", r"'::1/128'"),
        ("*.com", "covers the whole public suffix 'com'"),
        ("*.co.uk", "covers the whole public suffix 'co.uk'"),
        ("*.io", "public suffix 'io'"),
        ("*..icr.io", "empty label"),
    ],
)
def test_pattern_refuses_with_advice(raw: str, advice: str) -> None:
    with pytest.raises(InvalidPattern, match=advice):
        parse_pattern(raw)


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("*.icr.io", "us.icr.io", True),
        ("*.icr.io", "dd0.us.icr.io", True),
        ("*.icr.io", "icr.io", False),
        ("*.icr.io", "evilicr.io", False),
        ("*.icr.io", "icr.io.evil.com", False),
        ("icr.io", "icr.io", True),
        ("icr.io", "us.icr.io", False),
    ],
)
def test_pattern_matching(pattern: str, name: str, matches: bool) -> None:
    assert parse_pattern(pattern).matches(name) is matches


def test_parent_suffixes() -> None:
    assert parent_suffixes("a.b.icr.io") == ["b.icr.io", "icr.io", "io"]
    assert parent_suffixes("io") == []


label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
domain = st.lists(label, min_size=2, max_size=4).map(".".join)


@given(prefix=st.lists(label, min_size=0, max_size=3), base=domain, other=domain)
def test_wildcard_matches_iff_label_suffix(prefix: list[str], base: str, other: str) -> None:
    """A name matches *.D iff it ends with .D on a label boundary and is not D."""
    try:
        pattern = parse_pattern(f"*.{base}")
    except InvalidPattern:  # a wildcard over a public suffix such as *.co.uk
        assume(False)
        return
    for name in (".".join([*prefix, base]), ".".join([*prefix, other])):
        labels, dlabels = name.split("."), base.split(".")
        expected = len(labels) > len(dlabels) and labels[-len(dlabels):] == dlabels
        assert pattern.matches(name) is expected
