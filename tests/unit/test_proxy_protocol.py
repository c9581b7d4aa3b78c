"""The PROXY protocol parser (wire/proxy_protocol.py) on the headers balancers
send, cut at every offset and followed by the client's bytes, and on what a
balancer never sends: each refusal is a ProxyHeaderError (400, proxy_header)."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from portcullis.basics.errors import ProxyHeaderError, Refusal
from portcullis.basics.vocabulary import Reason
from portcullis.wire.proxy_protocol import (
    MAX_HEADER,
    V2_SIGNATURE,
    ProxyHeader,
    parse_proxy_header,
)

V4 = ipaddress.ip_address
CLIENT_BYTES = b"CONNECT us.icr.io:443 HTTP/1.1\r\n\r\n\x16\x03\x01junk"


def v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(body)) + body


V2_TCP4 = v2(1, 0x11, bytes([192, 0, 2, 7, 10, 0, 0, 1]) + struct.pack("!HH", 51234, 3128))
V2_TCP6 = v2(1, 0x21, V4("2001:db8::7").packed + V4("2001:db8::1").packed
             + struct.pack("!HH", 40000, 443))
# HAProxy adds TLVs (here a PP2_TYPE_UNIQUE_ID): they are skipped, not read.
V2_TLVS = v2(1, 0x11, bytes([192, 0, 2, 8, 10, 0, 0, 1]) + struct.pack("!HH", 1, 2)
             + b"\x05\x00\x04abcd")
V2_LOCAL = v2(0, 0x00, b"")
V2_LOCAL_WITH_ADDRESSES = v2(0, 0x11, bytes(12))
V1_TCP4 = b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 3128\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n"
V1_UNKNOWN = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"
V1_LONGEST = (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
              b" ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n")

VALID = {
    "v2-tcp4": (V2_TCP4, ProxyHeader(2, (V4("192.0.2.7"), 51234), (V4("10.0.0.1"), 3128), 28)),
    "v2-tcp6": (V2_TCP6, ProxyHeader(2, (V4("2001:db8::7"), 40000),
                                     (V4("2001:db8::1"), 443), 52)),
    "v2-tlvs": (V2_TLVS, ProxyHeader(2, (V4("192.0.2.8"), 1), (V4("10.0.0.1"), 2), 35)),
    "v2-local": (V2_LOCAL, ProxyHeader(2, None, None, 16)),
    "v2-local-addresses": (V2_LOCAL_WITH_ADDRESSES, ProxyHeader(2, None, None, 28)),
    "v1-tcp4": (V1_TCP4, ProxyHeader(1, (V4("192.0.2.7"), 51234), (V4("10.0.0.1"), 3128),
                                     len(V1_TCP4))),
    "v1-tcp6": (V1_TCP6, ProxyHeader(1, (V4("2001:db8::7"), 40000), (V4("2001:db8::1"), 443),
                                     len(V1_TCP6))),
    "v1-unknown": (V1_UNKNOWN, ProxyHeader(1, None, None, len(V1_UNKNOWN))),
    "v1-longest": (V1_LONGEST, ProxyHeader(1, (V4("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
                                               65535),
                                           (V4("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
                                            65535), 104)),
    # The longest line the specification allows: 107 bytes.
    "v1-unknown-longest": (V1_LONGEST.replace(b"TCP6", b"UNKNOWN"),
                           ProxyHeader(1, None, None, 107)),
}


@pytest.mark.parametrize("name", VALID)
def test_a_header_is_read_exactly(name: str) -> None:
    raw, expected = VALID[name]
    assert parse_proxy_header(raw) == expected
    assert expected.length == len(raw)


@pytest.mark.parametrize("name", VALID)
def test_every_cut_needs_more(name: str) -> None:
    raw, _ = VALID[name]
    for cut in range(len(raw)):
        assert parse_proxy_header(raw[:cut]) is None, cut


@pytest.mark.parametrize("name", VALID)
def test_the_clients_bytes_after_it_are_not_taken(name: str) -> None:
    raw, expected = VALID[name]
    assert parse_proxy_header(raw + CLIENT_BYTES) == expected
    assert parse_proxy_header(bytearray(raw + V2_SIGNATURE)) == expected


BAD = {
    "http": b"CONNECT us.icr.io:443 HTTP/1.1\r\n\r\n",
    "tls": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "lowercase": b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1-no-cr": b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2\n",
    "v1-bare-cr": b"PROXY TCP4 192.0.2.7\r10.0.0.1 1 2\r\n",
    "v1-too-long": b"PROXY UNKNOWN " + b"x" * 100,
    "v1-udp": b"PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n",
    "v1-family": b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n",
    "v1-family6": b"PROXY TCP6 192.0.2.7 10.0.0.1 1 2\r\n",
    "v1-not-ip": b"PROXY TCP4 us.icr.io 10.0.0.1 1 2\r\n",
    "v1-octal": b"PROXY TCP4 010.0.0.1 10.0.0.1 1 2\r\n",
    "v1-leading-zero-port": b"PROXY TCP4 192.0.2.7 10.0.0.1 01 2\r\n",
    "v1-big-port": b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 2\r\n",
    "v1-sign": b"PROXY TCP4 192.0.2.7 10.0.0.1 +1 2\r\n",
    "v1-missing-port": b"PROXY TCP4 192.0.2.7 10.0.0.1 1\r\n",
    "v1-double-space": b"PROXY TCP4  192.0.2.7 10.0.0.1 1 2\r\n",
    "v1-non-ascii": b"PROXY TCP4 192.0.2.7 10.0.0.1 \xd9\xa1 2\r\n",
    "v1-empty": b"PROXY \r\n",
    "v2-version": V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12),
    "v2-command": V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12),
    "v2-udp": v2(1, 0x12, bytes(12)),
    "v2-unix": v2(1, 0x31, bytes(216)),
    "v2-short-block": v2(1, 0x21, bytes(12)),
    "v2-too-long": V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_HEADER),
    "signature-typo": b"\r\n\r\n\x00\r\nQUIX\n" + bytes(8),
}


@pytest.mark.parametrize("name", BAD)
def test_what_a_balancer_never_sends_is_refused(name: str) -> None:
    with pytest.raises(ProxyHeaderError) as caught:
        parse_proxy_header(BAD[name])
    error = caught.value
    assert isinstance(error, ValueError) and isinstance(error, Refusal)
    assert (error.status, error.reason) == (400, Reason.PROXY_HEADER)
    assert error.message


def test_a_refusal_comes_as_soon_as_the_bytes_cannot_be_a_header() -> None:
    # The first byte of a request or a ClientHello is enough: no wait for more.
    for first in (b"G", b"C", b"\x16"):
        with pytest.raises(ProxyHeaderError):
            parse_proxy_header(first)
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(V2_SIGNATURE + b"\x10")
