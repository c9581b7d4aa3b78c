"""The PROXY protocol header a load balancer puts in front of a connection
(HAProxy's proxy-protocol.txt, versions 1 and 2), sans-IO.

Bytes in, a `ProxyHeader` out: `None` means "need more bytes", and
`ProxyHeaderError` (400, reason `proxy_header`) means the stream does not start
with a usable header. The header is only trusted from listed balancers; which
peers those are is the caller's business (proxy/proxied.py). `length` says how
many bytes the header took, so the caller can consume exactly those and leave
the client's own bytes in the socket.

Strict on purpose: anything a balancer would not send (a v1 line without CRLF,
leading zeros, an address of the wrong family, UDP, a truncated v2 address
block) is refused rather than guessed at, since the header decides who the
client is.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from portcullis.basics.errors import ProxyHeaderError
from portcullis.basics.ip import IPAddress

__all__ = ["MAX_HEADER", "V2_SIGNATURE", "ProxyHeader", "parse_proxy_header"]

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included (proxy-protocol.txt §2.1)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# v2 may carry TLVs; balancers send a few dozen bytes. More is refused, not read.
MAX_HEADER = 4096
_V2_FIXED = 16
_V2_FAMILIES = {0x11: (4, 12), 0x21: (16, 36)}  # TCP over IPv4 / IPv6: address bytes, block size

Endpoint = tuple[IPAddress, int]


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    version: int
    # The real client and what it connected to; None for a LOCAL (v2) or
    # UNKNOWN (v1) header: the balancer's own connection, a health check.
    source: Endpoint | None
    destination: Endpoint | None
    length: int  # bytes the header took


def parse_proxy_header(data: bytes | bytearray) -> ProxyHeader | None:
    """The header at the start of `data`; None while it may still be incomplete."""
    head = bytes(data[:_V2_FIXED])
    # A prefix of the signature (or of "PROXY ") may still become a header.
    if V2_SIGNATURE.startswith(head[:12]):
        return _parse_v2(bytes(data)) if len(head) >= 12 else None
    if V1_PREFIX.startswith(head[:6]):
        return _parse_v1(bytes(data[:V1_MAX]))
    raise ProxyHeaderError("no PROXY protocol header: the connection must start with one"
                           f" (got {head[:8]!r})")


# --- version 1: one text line ---------------------------------------------------


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n")
    if end < 0:
        if b"\n" in data or b"\r" in data[:-1]:
            raise ProxyHeaderError("PROXY v1 header: a line must end with CRLF")
        if len(data) >= V1_MAX:
            raise ProxyHeaderError(f"PROXY v1 header longer than {V1_MAX} bytes")
        return None
    line = data[:end]
    if not line.startswith(V1_PREFIX):
        raise ProxyHeaderError("PROXY v1 header: no 'PROXY ' at the start")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 header: bytes outside ASCII") from None
    fields = text.split(" ")
    if fields[1] == "UNKNOWN":
        return ProxyHeader(1, None, None, end + 2)  # the rest of the line is to be ignored
    if fields[1] not in ("TCP4", "TCP6") or len(fields) != 6:
        raise ProxyHeaderError(
            f"PROXY v1 header: expected 'PROXY TCP4|TCP6 SRC DST SPORT DPORT', got {text[:60]!r}")
    version = 4 if fields[1] == "TCP4" else 6
    source = (_v1_address(fields[2], version), _v1_port(fields[4]))
    destination = (_v1_address(fields[3], version), _v1_port(fields[5]))
    return ProxyHeader(1, source, destination, end + 2)


def _v1_address(text: str, version: int) -> IPAddress:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 header: {text[:45]!r} is not an IP address") from None
    if address.version != version:
        raise ProxyHeaderError(f"PROXY v1 header: {text} is not an IPv{version} address")
    return address


def _v1_port(text: str) -> int:
    if not text.isdigit() or not text.isascii() or (text[0] == "0" and text != "0") \
            or len(text) > 5 or int(text) > 65535:
        raise ProxyHeaderError(f"PROXY v1 header: {text[:8]!r} is not a port (0-65535)")
    return int(text)


# --- version 2: binary ------------------------------------------------------------------


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < _V2_FIXED:
        if len(data) > 12 and data[12] >> 4 != 2:
            raise ProxyHeaderError(f"PROXY v2 header: version {data[12] >> 4}, expected 2")
        return None
    ver_cmd, family, size = struct.unpack_from("!BBH", data, 12)
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 header: version {ver_cmd >> 4}, expected 2")
    command = ver_cmd & 0x0F
    if command > 1:
        raise ProxyHeaderError(f"PROXY v2 header: unknown command {command}")
    total = _V2_FIXED + size
    if total > MAX_HEADER:
        raise ProxyHeaderError(f"PROXY v2 header of {total} bytes; at most {MAX_HEADER} are read")
    if command == 1 and family not in _V2_FAMILIES and family != 0x00:
        raise ProxyHeaderError(
            f"PROXY v2 header: address family/protocol 0x{family:02x} is not TCP over IP")
    if command == 1 and family in _V2_FAMILIES and size < _V2_FAMILIES[family][1]:
        raise ProxyHeaderError(
            f"PROXY v2 header: {size} bytes cannot hold the addresses of family 0x{family:02x}")
    if len(data) < total:
        return None
    if command == 0 or family == 0x00:
        # LOCAL: the balancer speaks for itself; UNSPEC: it does not know. Addresses ignored.
        return ProxyHeader(2, None, None, total)
    width, _ = _V2_FAMILIES[family]
    body = data[_V2_FIXED:total]
    src = ipaddress.ip_address(body[:width])
    dst = ipaddress.ip_address(body[width:2 * width])
    sport, dport = struct.unpack_from("!HH", body, 2 * width)
    return ProxyHeader(2, (src, sport), (dst, dport), total)
