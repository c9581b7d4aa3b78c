"""Real TLS ClientHellos for tests, and byte-level tools to edit them.

The hellos come from OpenSSL through memory BIOs, so tests parse what real
clients send; the editing helpers rebuild lengths so a test can change one
extension (a second SNI, an ECH extension) and keep the rest real.
"""

from __future__ import annotations

import ssl
import struct
from collections.abc import Mapping


def real_hello(server_hostname: str | None, alpn: list[str] | None = None) -> bytes:
    """The first flight OpenSSL sends: one record holding the ClientHello."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        return outgoing.read()
    raise AssertionError("the handshake cannot finish without a server")


def split_hello(flight: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
    """(body up to the extensions, [(type, data)]) of a single-record hello."""
    assert flight[0] == 0x16 and flight[5] == 0x01
    body = flight[9 : 9 + int.from_bytes(flight[6:9], "big")]
    i = 34
    i += 1 + body[i]
    i += 2 + int.from_bytes(body[i : i + 2], "big")
    i += 1 + body[i]
    prefix, i = body[:i], i + 2
    exts = []
    while i < len(body):
        ext_type, ext_len = struct.unpack_from("!HH", body, i)
        exts.append((ext_type, body[i + 4 : i + 4 + ext_len]))
        i += 4 + ext_len
    return prefix, exts


def build_message(prefix: bytes, exts: list[tuple[int, bytes]]) -> bytes:
    """A ClientHello handshake message with all lengths recomputed."""
    blob = b"".join(struct.pack("!HH", t, len(d)) + d for t, d in exts)
    body = prefix + struct.pack("!H", len(blob)) + blob
    return b"\x01" + len(body).to_bytes(3, "big") + body


def records(message: bytes, size: int = 1 << 14, content_type: int = 0x16) -> bytes:
    """Frame a handshake message into records of at most `size` bytes."""
    return reframe(message, [size], content_type)


def reframe(message: bytes, sizes: list[int], content_type: int = 0x16) -> bytes:
    """Records cut at the given sizes (cycled); the last takes what is left."""
    out, i, k = bytearray(), 0, 0
    while i < len(message):
        chunk = message[i : i + sizes[k % len(sizes)]]
        out += struct.pack("!BHH", content_type, 0x0301, len(chunk)) + chunk
        i, k = i + len(chunk), k + 1
    return bytes(out)


def server_name(*entries: tuple[int, bytes]) -> bytes:
    """A server_name extension body with the given (name type, name) entries."""
    blob = b"".join(struct.pack("!BH", kind, len(name)) + name for kind, name in entries)
    return struct.pack("!H", len(blob)) + blob


def with_extensions(
    flight: bytes, edit: Mapping[int, bytes | None], extra: list[tuple[int, bytes]]
) -> bytes:
    """Replace (or drop, with None) extensions by type, then append `extra`."""
    prefix, exts = split_hello(flight)
    kept: list[tuple[int, bytes]] = []
    for ext_type, data in exts:
        replaced = edit.get(ext_type, data)
        if replaced is not None:
            kept.append((ext_type, replaced))
    return records(build_message(prefix, kept + extra))
