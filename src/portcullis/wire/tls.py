"""The TLS ClientHello as a firewall sees it (sans-IO, docs/semantics.md §4).

Bytes in, a `ClientHello` out: `None` means "need more bytes", `NotTLS` means
the stream is not a TLS handshake at all, `MalformedClientHello` means it is
one but cannot be trusted. Only what the policy needs is extracted (SNI, ECH
presence, ALPN); the bytes themselves are relayed untouched by the caller.

The hello may be fragmented over several handshake records (RFC 8446 §5.1
allows it, and evasion tools use it to hide the SNI from naive middleboxes)
and over any TCP segment boundaries; both are reassembled here. Anything the
server could read differently from us (a second server_name, a repeated
extension, bytes after the hello in its last record) is refused.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from portcullis.basics.errors import MalformedClientHello, NotTLS
from portcullis.basics.memo import remember

__all__ = [
    "ClientHello",
    "parse_client_hello",
    "peek_is_tls",
]

_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_EXT_SERVER_NAME = 0x0000
_EXT_ALPN = 0x0010
_EXT_ECH = 0xFE0D
_HOST_NAME = 0x00
_MAX_RECORD = 1 << 14  # plaintext fragment limit, RFC 8446 §5.1
MAX_HELLO_SIZE = 65536
_EXTENSION_HEADER = struct.Struct(">HH")  # type, length


class ClientHello(NamedTuple):
    # A NamedTuple, not a frozen dataclass: one is built per connection, and a
    # frozen dataclass's __init__ sets each field through object.__setattr__
    # (bench/findings.md, "Instructions per connection").
    # host_name as sent (ASCII, not normalized: comparing is the policy's job).
    sni: str | None
    # encrypted_client_hello (0xfe0d) present: the real name is hidden.
    has_ech: bool
    alpn: tuple[str, ...]
    # Bytes of the buffer the hello's records occupy.
    record_bytes: int


def peek_is_tls(buf: bytes | bytearray) -> bool | None:
    """Whether `buf` starts like a TLS handshake record (0x16 0x03 0x00-0x04).

    None only while every byte so far fits and fewer than 3 have arrived; a
    first byte of `G` is already a definite False.
    """
    n = len(buf)
    if n >= 1 and buf[0] != _HANDSHAKE:
        return False
    if n >= 2 and buf[1] != 0x03:
        return False
    if n >= 3:
        return buf[2] <= 0x04
    return None


def _describe(buf: bytes | bytearray) -> str:
    head = bytes(buf[:8])
    if buf[0] & 0x80:
        return f"an SSLv2-style hello ({head.hex(' ')}); only TLS records are accepted"
    if head[:1].isalpha() and head.isascii():
        return f"text {head!r}, probably plain HTTP"
    return f"first bytes {head.hex(' ')}, not a TLS handshake record (16 03 0x)"


def _u16(b: bytes | bytearray, i: int) -> int:
    return (b[i] << 8) | b[i + 1]


def parse_client_hello(
    buf: bytes | bytearray, max_size: int = MAX_HELLO_SIZE
) -> ClientHello | None:
    """Parse the ClientHello at the start of `buf`; `max_size` bounds its records."""
    looks = peek_is_tls(buf)
    if looks is None:
        return None
    if not looks:
        raise NotTLS(_describe(buf))
    n = len(buf)
    # Common case first: the whole hello in the first record, parsed in place.
    if n >= 9:
        rec_len = buf[3] << 8 | buf[4]
        msg_len = 4 + (buf[6] << 16 | buf[7] << 8 | buf[8])
        if rec_len == msg_len and n >= 5 + rec_len and rec_len <= _MAX_RECORD:
            if buf[5] != _CLIENT_HELLO:
                raise MalformedClientHello(f"first handshake message has type {buf[5]}, not 1")
            if 5 + rec_len > max_size:
                raise MalformedClientHello(f"ClientHello larger than {max_size} bytes")
            return _parse_body(buf, 9, 5 + rec_len, 5 + rec_len)
    return _reassemble(buf, max_size)


def _reassemble(buf: bytes | bytearray, max_size: int) -> ClientHello | None:
    n = len(buf)
    hs = bytearray()
    msg_len = -1
    pos = 0
    while pos < n:
        if buf[pos] != _HANDSHAKE:
            raise MalformedClientHello(
                f"record of type {buf[pos]} at offset {pos} inside a fragmented ClientHello"
            )
        if (pos + 1 < n and buf[pos + 1] != 0x03) or (pos + 2 < n and buf[pos + 2] > 0x04):
            raise MalformedClientHello(f"bad record version at offset {pos}")
        if pos + 5 > n:
            return None
        length = _u16(buf, pos + 3)
        if length == 0 or length > _MAX_RECORD:
            raise MalformedClientHello(f"handshake record of {length} bytes at offset {pos}")
        stop = pos + 5 + length
        if stop > max_size:
            raise MalformedClientHello(f"ClientHello larger than {max_size} bytes")
        hs += buf[pos + 5 : min(stop, n)]
        if hs and hs[0] != _CLIENT_HELLO:
            raise MalformedClientHello(f"first handshake message has type {hs[0]}, not 1")
        if msg_len < 0 and len(hs) >= 4:
            msg_len = 4 + (hs[1] << 16 | hs[2] << 8 | hs[3])
            if msg_len + 5 > max_size:
                raise MalformedClientHello(f"ClientHello of {msg_len} bytes exceeds {max_size}")
        if stop > n:
            return None
        pos = stop
        if msg_len >= 0 and len(hs) >= msg_len:
            if len(hs) > msg_len:
                raise MalformedClientHello("bytes after the ClientHello in its last record")
            return _parse_body(hs, 4, msg_len, pos)
    return None


def _parse_body(b: bytes | bytearray, i: int, end: int, record_bytes: int) -> ClientHello:
    """Parse the ClientHello body `b[i:end]`; every read is bounds-checked.

    The fixed part's reads are written out, not through helpers: this runs for
    every tunnel, and a Python call costs more than the read it wraps."""
    i += 2 + 32 + 1
    if i > end:
        raise MalformedClientHello("version and random overruns the ClientHello")
    sid_len = b[i - 1]
    if sid_len > 32:
        raise MalformedClientHello(f"session id of {sid_len} bytes")
    i += sid_len + 2
    if i > end:
        raise MalformedClientHello("session id overruns the ClientHello")
    suites = b[i - 2] << 8 | b[i - 1]
    if suites < 2 or suites % 2:
        raise MalformedClientHello(f"cipher suites length {suites}")
    i += suites + 1
    if i > end:
        raise MalformedClientHello("cipher suites overruns the ClientHello")
    methods = b[i - 1]
    if methods < 1:
        raise MalformedClientHello("no compression methods")
    i += methods
    if i > end:
        raise MalformedClientHello("compression methods overruns the ClientHello")
    if i == end:  # TLS 1.2 allows a hello without extensions
        return ClientHello(None, False, (), record_bytes)
    i += 2
    if i > end:
        raise MalformedClientHello("extensions length overruns the ClientHello")
    if i + (b[i - 2] << 8 | b[i - 1]) != end:
        raise MalformedClientHello("extensions length disagrees with the ClientHello length")
    layout = _LAYOUTS.get(end - i)
    if layout is None or layout.headers.unpack_from(b, i) != layout.expected:
        layout = _walk(b, i, end)
    at = layout.server_name
    if at < 0:
        sni = None
    else:
        at += i
        sni = _server_name(b, at, at + (b[at - 2] << 8 | b[at - 1]))
    at = layout.alpn
    if at < 0:
        alpn: tuple[str, ...] = ()
    else:
        at += i
        alpn = _alpn(b, at, at + (b[at - 2] << 8 | b[at - 1]))
    return ClientHello(sni, layout.has_ech, alpn, record_bytes)


class _Layout(NamedTuple):
    """Where a hello's extensions lie, relative to the first one's header.

    A client library sends the same extensions in the same order with the same
    lengths on every connection (only their contents differ: random, key
    share), so the layout of the last hello with a given extensions length is
    kept. `headers` reads every extension header at once, skipping the bodies;
    when they equal `expected`, the walk would have read the same headers at
    the same offsets and found what this layout says, so it is skipped (the
    per-connection cost of the walk was ~500 bytecodes: bench/findings.md).
    """

    headers: struct.Struct
    expected: tuple[int, ...]  # type, length of each extension in order
    server_name: int  # offset of the server_name body; -1 for none
    alpn: int
    has_ech: bool


_LAYOUTS: dict[int, _Layout] = {}
_MAX_LAYOUTS = 64  # hellos of other lengths (new clients, resumptions, GREASE) replace them
# Real hellos carry 10-25 extensions; a crafted one may carry thousands of
# empty ones, whose layout is not worth a Struct of that many fields.
_MAX_REMEMBERED_EXTENSIONS = 64
_UNREMEMBERED = struct.Struct(">")


def _walk(b: bytes | bytearray, start: int, end: int) -> _Layout:
    """Read the extension headers one by one from `start` to `end`; refuse a
    repeated extension or one that overruns the hello; remember the layout."""
    bodies: dict[int, int] = {}
    expected: list[int] = []
    header = _EXTENSION_HEADER.unpack_from
    i = start
    try:
        while i < end:
            ext, length = header(b, i)
            if ext in bodies:
                raise MalformedClientHello(f"extension 0x{ext:04x} appears twice")
            bodies[ext] = i + 4 - start
            expected += (ext, length)
            i += 4 + length
    except struct.error:  # a header past the buffer's end
        i = end + 1
    if i != end:
        # A header or a body past the hello's end (the last one read).
        raise MalformedClientHello("an extension overruns the ClientHello")
    found = (bodies.get(_EXT_SERVER_NAME, -1), bodies.get(_EXT_ALPN, -1), _EXT_ECH in bodies)
    if len(bodies) > _MAX_REMEMBERED_EXTENSIONS:
        return _Layout(_UNREMEMBERED, (), *found)
    lengths = expected[1::2]
    headers = struct.Struct(">" + "".join(f"HH{length}x" for length in lengths))
    return remember(_LAYOUTS, end - start, _Layout(headers, tuple(expected), *found), _MAX_LAYOUTS)


def _server_name(b: bytes | bytearray, i: int, end: int) -> str | None:
    # What every client sends: one host_name entry that fills the list.
    if end - i > 5 and b[i + 2] == _HOST_NAME and (b[i] << 8 | b[i + 1]) == end - i - 2 \
            and (b[i + 3] << 8 | b[i + 4]) == end - i - 5:
        raw = b[i + 5 : end]
        if not raw.isascii():
            raise MalformedClientHello("host_name in server_name is not ASCII")
        return raw.decode("ascii")
    if i + 2 > end or i + 2 + (b[i] << 8 | b[i + 1]) != end or i + 2 == end:
        raise MalformedClientHello("server_name list length is wrong or the list is empty")
    i += 2
    name: str | None = None
    while i < end:
        if i + 3 > end:
            raise MalformedClientHello("server_name entry overruns its list")
        kind, length = b[i], b[i + 1] << 8 | b[i + 2]
        i += 3
        if i + length > end:
            raise MalformedClientHello("server_name entry overruns its list")
        if kind == _HOST_NAME:
            if name is not None:
                raise MalformedClientHello("two host_name entries in server_name")
            if length == 0:
                raise MalformedClientHello("empty host_name in server_name")
            raw = b[i : i + length]
            if not raw.isascii():
                raise MalformedClientHello("host_name in server_name is not ASCII")
            name = raw.decode("ascii")
        i += length
    return name


def _alpn(b: bytes | bytearray, i: int, end: int) -> tuple[str, ...]:
    if i + 2 > end or i + 2 + (b[i] << 8 | b[i + 1]) != end or i + 2 == end:
        raise MalformedClientHello("ALPN list length is wrong or the list is empty")
    i += 2
    protocols: list[str] = []
    while i < end:
        length = b[i]
        if length == 0 or i + 1 + length > end:
            raise MalformedClientHello("ALPN protocol name is empty or overruns its list")
        # Protocol ids are opaque bytes; latin-1 maps each byte to one char.
        protocols.append(b[i + 1 : i + 1 + length].decode("latin-1"))
        i += 1 + length
    return tuple(protocols)
