"""What an accepted PROXY protocol header must be, read another way (struct and a
regular expression instead of the parser's own code): shared by the property
tests and the atheris harness of wire/proxy_protocol.py."""

from __future__ import annotations

import ipaddress
import re
import struct

from portcullis.wire.proxy_protocol import MAX_HEADER, V2_SIGNATURE, ProxyHeader

_V1 = re.compile(rb"PROXY (TCP4|TCP6) (\S+) (\S+) (0|[1-9][0-9]{0,4}) (0|[1-9][0-9]{0,4})\r\n")


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
