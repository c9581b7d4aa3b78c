"""Property tests of the request-head parser: whatever the bytes, the only
outcomes are "need more" (None), a head, or one of the module's HttpErrors."""

from __future__ import annotations

import contextlib
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from portcullis.basics.errors import HttpError
from portcullis.basics.names import normalize_name
from portcullis.wire import http1
from portcullis.wire.http1 import (
    KNOWN_METHODS,
    MAX_HEAD_SIZE,
    Authority,
    RequestHead,
    check_request,
    parse_absolute_uri,
    parse_connect_target,
    parse_request_head,
)

FUZZ = settings(max_examples=400, deadline=None)

VALID = [
    b"CONNECT us.icr.io:443 HTTP/1.1\r\nHost: us.icr.io:443\r\nUser-Agent: skopeo/1.14\r\n\r\n",
    b"CONNECT [2001:db8::1]:443 HTTP/1.0\r\n\r\n",
    b"GET http://dd0.icr.io/v2/ns/app/blobs/sha256:ab?x=1 HTTP/1.1\r\nHost: dd0.icr.io\r\n"
    b"Accept: */*\r\nAuthorization: Bearer abc.def\r\nX-Obs: caf\xe9\r\n\r\n",
    b"\r\nPUT http://a.example:5000/v2/x HTTP/1.1\r\nHost: a.example:5000\r\n"
    b"Content-Length: 4\r\n\r\n",
    b"POST http://a.example/ HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n",
]


def outcome(data: bytes, max_size: int = MAX_HEAD_SIZE) -> RequestHead | str | None:
    try:
        parsed = parse_request_head(data, max_size)
    except HttpError as exc:
        assert exc.status in (400, 431, 501) and exc.message
        return "error"
    if parsed is None:
        # "Need more" is only an answer while the limit is not reached.
        assert len(data) < max_size
    else:
        _check_invariants(parsed, data, max_size)
    return parsed


def _check_invariants(parsed: RequestHead, data: bytes, max_size: int) -> None:
    assert parsed.head_length <= min(len(data), max_size)
    assert data[: parsed.head_length].endswith(b"\r\n\r\n")
    assert parsed.method in KNOWN_METHODS
    assert parsed.version in ("HTTP/1.0", "HTTP/1.1")
    for name, value in parsed.headers:
        assert name and name == name.lower() and name.isascii()
        assert not any(c in value for c in "\r\n\x00")
        assert value == value.strip(" \t")
    try:
        authority = check_request(parsed)
    except HttpError:
        return
    assert 1 <= authority.port <= 65535 and authority.host


def test_every_truncation_needs_more() -> None:
    for valid in VALID:
        for cut in range(len(valid)):
            assert outcome(valid[:cut]) is None, (valid, cut)
        parsed = outcome(valid)
        assert isinstance(parsed, RequestHead) and parsed.head_length == len(valid)


@FUZZ
@given(st.sampled_from(VALID), st.binary(max_size=200))
def test_bytes_after_the_head_change_nothing(valid: bytes, junk: bytes) -> None:
    assert outcome(valid + junk) == outcome(valid)


@FUZZ
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_mutated_heads(valid: bytes, edits: list[tuple[int, int]]) -> None:
    data = bytearray(valid)
    for where, byte in edits:
        data[where % len(data)] = byte
    outcome(bytes(data))


@FUZZ
@given(st.sampled_from(VALID), st.data())
def test_inserted_and_deleted_bytes(valid: bytes, data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(valid)))
    if data.draw(st.booleans()):
        mutated = valid[:at] + data.draw(st.binary(min_size=1, max_size=8)) + valid[at:]
    else:
        mutated = valid[:at] + valid[at + data.draw(st.integers(1, 8)) :]
    outcome(mutated)


@FUZZ
@given(st.binary(max_size=600), st.integers(1, 700))
def test_random_bytes(data: bytes, max_size: int) -> None:
    outcome(data, max_size)
    outcome(b"GET http://a/ HTTP/1.1\r\n" + data, max_size)


_TOKEN = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
_VALUE = st.text(string.printable.strip() + " \t\xe9", max_size=20).map(lambda v: v.strip(" \t"))


@FUZZ
@given(
    st.sampled_from(sorted(KNOWN_METHODS - {"CONNECT"})),
    st.lists(st.tuples(st.text(_TOKEN, min_size=1, max_size=12), _VALUE), max_size=12),
    st.integers(0, 10_000),
)
def test_generated_heads_round_trip(method: str, headers: list[tuple[str, str]], cut: int) -> None:
    raw = f"{method} http://a.example/ HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers
    )
    data = (raw + "\r\n").encode("latin-1")
    parsed = parse_request_head(data)
    assert parsed is not None
    assert parsed.headers == tuple((name.lower(), value) for name, value in headers)
    assert parse_request_head(data[: cut % len(data)]) is None


def _check_authority(authority: Authority) -> None:
    assert 1 <= authority.port <= 65535
    if not authority.is_ip:
        assert normalize_name(authority.host) == authority.host


# Plus an umlaut, NUL, the ideographic full stop and a fullwidth digit, which
# IDNA maps to '.' and '1'.
_AUTHORITY_CHARS = st.sampled_from([*"az09.-_:[]@%/?#+ ", "\u00fc", "\x00", "\u3002", "\uff11"])


@FUZZ
@given(st.one_of(st.text(max_size=40), st.text(_AUTHORITY_CHARS, max_size=30)))
def test_connect_targets_and_uris(text: str) -> None:
    for target in (text, text + ":443", "[" + text + "]:443"):
        with contextlib.suppress(HttpError):
            authority = parse_connect_target(target)
            _check_authority(authority)
            port_text = target.rpartition(":")[2]
            assert port_text.isascii() and int(port_text) == authority.port
    try:
        scheme, authority, path = parse_absolute_uri("http://" + text)
    except HttpError:
        return
    assert scheme == "http" and path.startswith("/")
    _check_authority(authority)


def _checked(parsed: RequestHead | str | None) -> Authority | str | None:
    if not isinstance(parsed, RequestHead):
        return None
    try:
        return check_request(parsed)
    except HttpError:
        return "error"


@FUZZ
@given(st.sampled_from(VALID), st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)),
                                        min_size=0, max_size=3), st.integers(1, 700))
def test_remembered_heads_read_as_fresh_ones(valid: bytes, edits: list[tuple[int, int]],
                                             max_size: int) -> None:
    # CONNECT heads are remembered by their bytes, their authorities by the head
    # (wire/http1.py, _HEADS): with every table filled by the bytes seen so far,
    # and with them emptied, the same bytes give the same answers.
    data = bytearray(valid)
    for where, byte in edits:
        data[where % len(data)] = byte
    for size in (MAX_HEAD_SIZE, max_size):
        remembered = outcome(bytes(data), size)
        remembered_check = _checked(remembered)
        http1._HEADS.clear()
        http1._AUTHORITIES.clear()
        fresh = outcome(bytes(data), size)
        assert fresh == remembered and _checked(fresh) == remembered_check


def test_credentials_are_not_remembered() -> None:
    data = (b"CONNECT us.icr.io:443 HTTP/1.1\r\nHost: us.icr.io:443\r\n"
            b"Proxy-Authorization: Basic dXNlcjpzZWNyZXQ=\r\n\r\n")
    plain = b"CONNECT us.icr.io:443 HTTP/1.1\r\nHost: us.icr.io:443\r\n\r\n"
    for bytes_ in (data, plain):
        parsed = parse_request_head(bytes_)
        assert parsed is not None and check_request(parsed).host == "us.icr.io"
    assert plain in http1._HEADS and data not in http1._HEADS
    assert not any(b"secret" in key or b"dXNlcjpzZWNyZXQ" in key for key in http1._HEADS)
    assert all(h.get("proxy-authorization") is None for h in http1._AUTHORITIES)


def test_long_heads_are_not_remembered() -> None:
    data = (b"CONNECT us.icr.io:443 HTTP/1.1\r\nHost: us.icr.io:443\r\nX-Pad: "
            + b"p" * http1._MAX_REMEMBERED + b"\r\n\r\n")
    http1._HEADS.clear()
    http1._AUTHORITIES.clear()
    parsed = parse_request_head(data)
    assert parsed is not None and check_request(parsed).port == 443
    assert not http1._HEADS and not http1._AUTHORITIES
