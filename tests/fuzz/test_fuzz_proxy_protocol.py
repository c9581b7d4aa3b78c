"""Property tests of the PROXY protocol parser on real-shaped headers, their
mutations and arbitrary bytes: the only outcomes are None, a ProxyHeader or
ProxyHeaderError, and every accepted header reads the same way to an
independent, struct-based reading."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.proxy_headers import SEEDS, independent

from portcullis.basics.errors import ProxyHeaderError
from portcullis.wire.proxy_protocol import V2_SIGNATURE, ProxyHeader, parse_proxy_header

FUZZ = settings(max_examples=400, deadline=None)


def outcome(data: bytes) -> ProxyHeader | str | None:
    try:
        return parse_proxy_header(data)
    except ProxyHeaderError as exc:
        assert exc.message
        return "refused"


@FUZZ
@given(seed=st.sampled_from(SEEDS), at=st.integers(0, 200), value=st.integers(0, 255),
       tail=st.binary(max_size=64))
def test_a_mutated_header_is_read_or_refused(seed: bytes, at: int, value: int,
                                             tail: bytes) -> None:
    data = bytearray(seed)
    data[at % len(data)] = value
    data += tail
    result = outcome(bytes(data))
    if isinstance(result, ProxyHeader):
        independent(bytes(data), result)


@FUZZ
@given(seed=st.sampled_from(SEEDS), cut=st.integers(0, 200), tail=st.binary(max_size=64))
def test_a_cut_header_needs_more_and_junk_after_it_is_left(seed: bytes, cut: int,
                                                          tail: bytes) -> None:
    cut %= len(seed)
    assert parse_proxy_header(seed[:cut]) is None
    whole = parse_proxy_header(seed)
    assert whole is not None and parse_proxy_header(seed + tail) == whole


@FUZZ
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    result = outcome(data)
    if isinstance(result, ProxyHeader):
        independent(data, result)


@FUZZ
@given(prefix=st.sampled_from([b"PROXY ", V2_SIGNATURE]), data=st.binary(max_size=300))
def test_arbitrary_bytes_after_a_signature(prefix: bytes, data: bytes) -> None:
    result = outcome(prefix + data)
    if isinstance(result, ProxyHeader):
        independent(prefix + data, result)
