"""Property tests of the PROXY protocol parser on real-shaped headers, their
mutations and arbitrary bytes: the only outcomes are None, a ProxyHeader or
ProxyHeaderError, and every accepted header reads the same way to an
independent, struct-based reading."""

from __future__ import annotations

import ipaddress
import re
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from portcullis.basics.errors import ProxyHeaderError
from portcullis.wire.proxy_protocol import MAX_HEADER, V2_SIGNATURE, ProxyHeader, parse_proxy_header

FUZZ = settings(max_examples=400, deadline=None)
_V1 = re.compile(rb"PROXY (TCP4|TCP6) (\S+) (\S+) (0|[1-9][0-9]{0,4}) (0|[1-9][0-9]{0,4})\r\n")


def outcome(data: bytes) -> ProxyHeader | str | None:
    try:
        return parse_proxy_header(data)
    except ProxyHeaderError as exc:
        assert exc.message
        return "refused"


def independent(data: bytes, header: ProxyHeader) -> None:
    """What an accepted header must be, read another way."""
    assert 0 < header.length <= len(data) and header.length <= MAX_HEADER
    if header.version == 2:
        assert data[:12] == V2_SIGNATURE
        ver_cmd, family, size = struct.unpack_from("!BBH", data, 12)
        assert ver_cmd >> 4 == 2 and header.length == 16 + size
        if header.source is None:
            assert ver_cmd & 0x0F == 0 or family == 0
            return
        width = 4 if family == 0x11 else 16
        assert family in (0x11, 0x21) and ver_cmd & 0x0F == 1
        body = data[16:16 + size]
        assert header.source == (ipaddress.ip_address(body[:width]),
                                 struct.unpack_from("!H", body, 2 * width)[0])
        assert header.destination == (ipaddress.ip_address(body[width:2 * width]),
                                      struct.unpack_from("!H", body, 2 * width + 2)[0])
        return
    line = data[:header.length]
    assert line.endswith(b"\r\n") and line.count(b"\r\n") == 1 and header.length <= 107
    if header.source is None:
        assert line.startswith(b"PROXY UNKNOWN")
        return
    match = _V1.fullmatch(line)
    assert match is not None
    assert header.source == (ipaddress.ip_address(match.group(2).decode()), int(match.group(4)))
    assert header.destination == (ipaddress.ip_address(match.group(3).decode()),
                                  int(match.group(5)))
    assert int(match.group(4)) <= 65535 and int(match.group(5)) <= 65535


def v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(body)) + body


SEEDS = [
    v2(1, 0x11, bytes([192, 0, 2, 7, 10, 0, 0, 1]) + struct.pack("!HH", 51234, 3128)),
    v2(1, 0x21, bytes(range(32)) + struct.pack("!HH", 1, 443) + b"\x05\x00\x02ab"),
    v2(0, 0x00, b""),
    b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 3128\r\n",
    b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n",
    b"PROXY UNKNOWN\r\n",
]


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
