"""A parent proxy's answer to CONNECT (wire/connect_reply.py): Squid's real
answers, cut at every offset and followed by the tunnel's first bytes, and
what is not HTTP (ParentAnswerError: 502, parent_failed)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portcullis.basics.errors import ParentAnswerError, Refusal
from portcullis.basics.vocabulary import Reason
from portcullis.wire.connect_reply import MAX_REPLY_HEAD, ConnectReply, parse_connect_reply

ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
# Refusals shaped as Squid 5.7 sends them (bodies follow the heads).
DENIED = (b"HTTP/1.1 403 Forbidden\r\nServer: squid/5.7\r\nMime-Version: 1.0\r\n"
          b"Content-Type: text/html;charset=utf-8\r\nContent-Length: 3464\r\n"
          b"X-Squid-Error: ERR_ACCESS_DENIED 0\r\nConnection: close\r\n\r\n")
AUTH = (b"HTTP/1.1 407 Proxy Authentication Required\r\nServer: squid/5.7\r\n"
        b"Proxy-Authenticate: Basic realm=\"corporate-parent\"\r\n\r\n")
NO_PHRASE = b"HTTP/1.0 200\r\n\r\n"
TUNNEL = b"\x16\x03\x03\x00\x10server speaks first"

VALID = {
    "established": (ESTABLISHED, ConnectReply(200, "Connection established", len(ESTABLISHED))),
    "denied": (DENIED, ConnectReply(403, "Forbidden", len(DENIED))),
    "auth": (AUTH, ConnectReply(407, "Proxy Authentication Required", len(AUTH))),
    "no-phrase": (NO_PHRASE, ConnectReply(200, "", len(NO_PHRASE))),
}


@pytest.mark.parametrize("name", VALID)
def test_an_answer_is_read_and_what_follows_is_left(name: str) -> None:
    raw, expected = VALID[name]
    assert parse_connect_reply(raw) == expected
    assert parse_connect_reply(raw + TUNNEL) == expected
    assert expected.established == (expected.status == 200)


@pytest.mark.parametrize("name", VALID)
def test_every_cut_needs_more(name: str) -> None:
    raw, _ = VALID[name]
    for cut in range(len(raw)):
        assert parse_connect_reply(raw[:cut]) is None, cut


@pytest.mark.parametrize("raw", [
    b"SSH-2.0-OpenSSH_9.2\r\n",
    b"\x16\x03\x03\x00\x02\x02\x28",
    b"HTTP/2 200\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 099 Low\r\n\r\n",
    b"HTTP/1.1 200 OK\nServer: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n folded\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_REPLY_HEAD,
])
def test_what_is_not_an_http_answer_is_parent_failed(raw: bytes) -> None:
    with pytest.raises(ParentAnswerError) as caught:
        parse_connect_reply(raw)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, Refusal)
    assert (caught.value.status, caught.value.reason) == (502, Reason.PARENT_FAILED)


def test_a_bad_status_line_is_refused_before_the_head_ends() -> None:
    assert parse_connect_reply(b"HTTP/1.1 200 OK\r\n") is None
    with pytest.raises(ParentAnswerError):
        parse_connect_reply(b"HTTP/1.1 2x0 OK\r\n")


@settings(max_examples=300, deadline=None)
@given(seed=st.sampled_from([v[0] for v in VALID.values()]), at=st.integers(0, 400),
       value=st.integers(0, 255), tail=st.binary(max_size=40))
def test_mutations_are_read_or_refused(seed: bytes, at: int, value: int, tail: bytes) -> None:
    data = bytearray(seed)
    data[at % len(data)] = value
    data += tail
    try:
        reply = parse_connect_reply(bytes(data))
    except ParentAnswerError:
        return
    if reply is not None:
        head = bytes(data[:reply.length])
        assert head.endswith(b"\r\n\r\n") and head.startswith(b"HTTP/1.")
        assert head[9:12] == str(reply.status).encode()
        assert all(" " <= c <= "~" for c in reply.reason)
