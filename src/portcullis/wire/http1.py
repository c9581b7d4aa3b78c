"""HTTP/1.x request heads as a forward proxy sees them (sans-IO, docs/architecture.md).

Bytes in, a `RequestHead` out: `None` means "need more bytes", an `HttpError`
means "bad input" and carries the status to answer with and the `Reason` to log.
Nothing here touches a socket; the proxy owns the buffer and calls again when
more bytes arrive.

The checks are deliberately stricter than RFC 9112's "MAY accept": a firewall
decides on the name it parsed, and every leniency (bare LF, folded lines, a
second Host, CL next to TE) is a chance for the firewall and the next hop to
read two different requests from the same bytes.

The errors (`HttpError` and its subclasses, each with the status to answer
and the reason to log) are in `portcullis.basics.errors`.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from portcullis.basics.errors import (
    AuthorityError,
    BadRequest,
    HeaderTooLarge,
    NotImplementedMethod,
)
from portcullis.basics.memo import remember
from portcullis.wire.authority import Authority, parse_authority

__all__ = [
    "KNOWN_METHODS",
    "MAX_HEADERS",
    "MAX_HEAD_SIZE",
    "RequestHead",
    "check_origin_request",
    "check_request",
    "parse_absolute_uri",
    "parse_connect_target",
    "parse_request_head",
]


MAX_HEAD_SIZE = 16384
MAX_HEADERS = 100
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
_VERSIONS = {b"HTTP/1.1": "HTTP/1.1", b"HTTP/1.0": "HTTP/1.0"}

# Compiled once at import; each is one C-level scan per head.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
# Every byte a head may hold: HTAB, CR, LF, printable ASCII, obs-text.
# `translate(None, _ALLOWED)` deletes them at C speed and leaves only the bad
# ones, an order of magnitude faster than a regex scan; the regex below only
# runs to name the culprit.
_ALLOWED = bytes([0x09, 0x0A, 0x0D, *range(0x20, 0x7F), *range(0x80, 0x100)])
_CTL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_STRAY_CR_LF = re.compile(rb"(?<!\r)\n|\r(?!\n)")


class RequestHead(NamedTuple):
    # A NamedTuple, not a frozen dataclass: one is built per connection, and a
    # frozen dataclass's __init__ sets each field through object.__setattr__
    # (bench/findings.md, "Instructions per connection").
    method: str
    target: str
    version: str
    # Names lowercased, values stripped of SP/HTAB, order and repeats kept.
    headers: tuple[tuple[str, str], ...]
    # Bytes consumed, including any leading empty lines and the final CRLFCRLF.
    head_length: int

    def get(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        key = name.lower()
        for k, v in self.headers:
            if k == key:
                return v
        return None

    def get_all(self, name: str) -> tuple[str, ...]:
        key = name.lower()
        return tuple([v for k, v in self.headers if k == key])

    def framing(self) -> tuple[list[str], list[str], list[str]]:
        """The values of Host, Content-Length and Transfer-Encoding, in one pass
        (every request through the proxy is checked on all three)."""
        hosts: list[str] = []
        lengths: list[str] = []
        codings: list[str] = []
        for name, value in self.headers:
            if name == "host":
                hosts.append(value)
            elif name == "content-length":
                lengths.append(value)
            elif name == "transfer-encoding":
                codings.append(value)
        return hosts, lengths, codings


def _check_bytes(buf: bytes | bytearray, start: int, end: int) -> None:
    """Refuse control bytes, and CR or LF outside a CRLF pair, in buf[start:end]."""
    region = buf[start:end]
    if region.translate(None, _ALLOWED):
        bad = _CTL.search(buf, start, end)
        offset = bad.start() if bad else -1
        raise BadRequest(f"control byte 0x{buf[offset]:02x} at offset {offset} in the request head")
    pairs = region.count(b"\r\n")
    if region.count(b"\r") == pairs and region.count(b"\n") == pairs:
        return
    stray = _STRAY_CR_LF.search(buf, start, end)
    if stray is None:  # unreachable while the counts above are right
        raise BadRequest("CR or LF outside a CRLF line ending")
    if stray.group() == b"\n":
        raise BadRequest(f"bare LF at offset {stray.start()}; lines must end with CRLF")
    raise BadRequest(f"CR not followed by LF at offset {stray.start()}")


def _parse_request_line(line: bytes | bytearray) -> tuple[str, str, str]:
    parts = line.split(b" ")
    if len(parts) != 3:
        raise BadRequest("the request line must be 'METHOD target HTTP/1.1' with single spaces")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise BadRequest(f"invalid method {method[:32]!r}")
    if not _TARGET.fullmatch(target):
        raise BadRequest("the request target must be non-empty printable ASCII")
    ver = _VERSIONS.get(bytes(version))
    if ver is None:
        raise BadRequest(f"unsupported HTTP version {version[:16]!r}; HTTP/1.0 or HTTP/1.1")
    name = method.decode("ascii")
    if name not in KNOWN_METHODS:
        raise NotImplementedMethod(f"method {name[:32]!r} is not supported")
    return name, target.decode("ascii"), ver


def _parse_headers(lines: list[bytes] | list[bytearray]) -> tuple[tuple[str, str], ...]:
    """Header lines (after the request line) to (lowercase name, stripped value).

    One loop with local names, not a call per line: this runs for every
    request through the proxy.
    """
    token = _TOKEN.fullmatch
    out: list[tuple[str, str]] = []
    append = out.append
    for line in lines:
        name, colon, value = line.partition(b":")
        if token(name) is None:
            if line[0] in (0x20, 0x09):
                raise BadRequest("obsolete line folding (a header line starting with whitespace)")
            if not colon or not name:
                raise BadRequest(f"header line without a name and colon: {line[:40]!r}")
            if name[-1] in (0x20, 0x09):
                raise BadRequest(f"whitespace between header name {name.rstrip()[:40]!r} and colon")
            raise BadRequest(f"invalid header name {name[:40]!r}")
        if not colon:
            raise BadRequest(f"header line without a name and colon: {line[:40]!r}")
        append((name.lower().decode("ascii"), value.strip(b" \t").decode("latin-1")))
    return tuple(out)


def parse_request_head(buf: bytes | bytearray, max_size: int = MAX_HEAD_SIZE) -> RequestHead | None:
    """Parse one request head from the start of `buf`.

    None: the head is not complete yet. Errors are raised as early as the bytes
    allow (a TLS hello sent to the plain port fails on its first byte).
    """
    start = 0
    # RFC 9112 §2.2: ignore empty lines before the request line (keep-alive
    # clients sometimes send a stray CRLF after a body).
    while buf.startswith(b"\r\n", start):
        start += 2
    end = buf.find(b"\r\n\r\n", start, max_size)
    if end < 0:
        if len(buf) >= max_size:
            raise HeaderTooLarge(f"no end of the request head within {max_size} bytes")
        # Early refusals, cheap enough to repeat on every read of a slow
        # client: junk in the request line (a TLS hello sent to the plain
        # port fails on its first byte) and a head ended by bare LFs, which
        # would otherwise wait for a CRLFCRLF that never comes.
        if buf.find(b"\n\n", start) >= 0:
            raise BadRequest("bare LF line endings; lines must end with CRLF")
        eol = buf.find(b"\n", start)
        if eol < 0:
            # A final CR may still get its LF from the next read.
            _check_bytes(buf, start, len(buf) - 1 if buf.endswith(b"\r") else len(buf))
        else:
            _check_bytes(buf, start, eol + 1)
            _parse_request_line(buf[start : eol - 1])
        return None
    # Only a short CONNECT head can have been kept: no other head pays for a copy.
    key = None
    if end + 4 <= _MAX_REMEMBERED and buf.startswith(b"CONNECT ", start):
        key = bytes(buf[: end + 4])
        head = _HEADS.get(key)
        if head is not None:
            return head
    _check_bytes(buf, start, end)
    lines = buf[start:end].split(b"\r\n")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(f"{len(lines) - 1} header lines; the limit is {MAX_HEADERS}")
    method, target, version = _parse_request_line(lines[0])
    headers = _parse_headers(lines[1:])
    head = RequestHead(method, target, version, headers, end + 4)
    if key is not None and _rememberable(head):
        remember(_HEADS, key, head, _MAX_ENTRIES)
    return head


# A runtime sends the same CONNECT head for every connection to a registry
# (same target, same User-Agent), so the last CONNECT heads parsed are kept by
# their bytes, and the authority each checks out to by the head: both are
# functions of their key alone, and their results are immutable. Heads with
# credentials are not kept, so no secret outlives its connection.
_HEADS: dict[bytes, RequestHead] = {}
_AUTHORITIES: dict[RequestHead, Authority] = {}
_MAX_REMEMBERED = 1024  # bytes of one head
_MAX_ENTRIES = 256  # a client sending ever new heads only empties the table


def _rememberable(head: RequestHead) -> bool:
    return head.method == "CONNECT" and head.head_length <= _MAX_REMEMBERED and not any(
        name == "proxy-authorization" for name, _ in head.headers
    )


def parse_connect_target(target: str) -> Authority:
    """The `host:port` of a CONNECT request (authority-form, port required)."""
    if "/" in target:
        raise BadRequest(f"CONNECT target {target[:80]!r} must be host:port, not a URL")
    try:
        return parse_authority(target, None, "CONNECT target")
    except AuthorityError as exc:
        raise BadRequest(str(exc)) from None


def parse_absolute_uri(target: str) -> tuple[str, Authority, str]:
    """Split `http://host[:port]/path?query` into scheme, authority, origin-form."""
    sep = target.find("://")
    if sep <= 0:
        raise BadRequest(
            f"request target {target[:64]!r} is not absolute-form; a proxy needs 'http://host/path'"
        )
    scheme = target[:sep].lower()
    if scheme == "https":
        raise BadRequest(
            "https:// in absolute form; HTTPS goes through a CONNECT tunnel "
            "(set HTTPS_PROXY, not a plain-HTTP request to the proxy)"
        )
    if scheme != "http":
        raise BadRequest(f"unsupported scheme {scheme[:16]!r}; only http:// (or CONNECT)")
    rest = target[sep + 3 :]
    if "#" in rest:
        raise BadRequest("a request target may not carry a #fragment")
    cut = len(rest)
    for delim in ("/", "?"):
        at = rest.find(delim, 0, cut)
        if at >= 0:
            cut = at
    path = rest[cut:]
    if not path:
        path = "/"
    elif path[0] == "?":
        path = "/" + path
    try:
        authority = parse_authority(rest[:cut], 80, "request target")
    except AuthorityError as exc:
        raise BadRequest(str(exc)) from None
    return scheme, authority, path


def _check_framing(lengths: list[str], codings: list[str], version: str) -> None:
    if lengths and codings:
        raise BadRequest("both Transfer-Encoding and Content-Length; the framing is ambiguous")
    if len(lengths) > 1:
        raise BadRequest(f"{len(lengths)} Content-Length headers; send exactly one")
    if lengths:
        value = lengths[0]
        # 18 digits stay far below any int limit and any real body size.
        if not (value.isascii() and value.isdigit()) or len(value) > 18:
            raise BadRequest(f"Content-Length {value[:32]!r} is not a decimal number")
    if codings:
        if version == "HTTP/1.0":
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request (RFC 9112 §6.1)")
        if len(codings) > 1 or codings[0].lower() != "chunked":
            raise BadRequest(
                f"Transfer-Encoding {', '.join(codings)[:64]!r}; only 'chunked' is accepted"
            )


def _single_host(hosts: list[str]) -> str | None:
    if len(hosts) > 1:
        raise BadRequest(f"{len(hosts)} Host headers; send exactly one")
    if hosts and not hosts[0].isascii():
        # Compared after IDNA mapping, bytes such as a soft hyphen would vanish
        # from the name decided on but not from the one forwarded.
        raise BadRequest(
            "the Host header has bytes outside ASCII; send an international name"
            " in its punycode form (xn--...)"
        )
    return hosts[0] if hosts else None


def check_origin_request(head: RequestHead) -> str | None:
    """Validate an origin-form request inside a decrypted connection (inspection):
    at most one ASCII Host, unambiguous framing. Returns the Host value."""
    if not head.target.startswith("/"):
        raise BadRequest(f"{head.target[:64]!r} is not origin-form ('GET /v2/...')")
    hosts, lengths, codings = head.framing()
    host = _single_host(hosts)
    _check_framing(lengths, codings, head.version)
    return host


def check_request(head: RequestHead) -> Authority:
    """Validate a proxy request and return the authority the policy decides on.

    CONNECT: authority-form target, no body. Any other method: absolute-form
    `http://` target, a Host header that names the same host and port (required
    for HTTP/1.1), and unambiguous body framing (the body itself is h11's job).
    """
    connect = head.method == "CONNECT"
    if connect:  # only these are kept: no other head is hashed for nothing
        authority = _AUTHORITIES.get(head)
        if authority is not None:
            return authority
    hosts, lengths, codings = head.framing()
    host_header = _single_host(hosts)
    if connect:
        authority = parse_connect_target(head.target)
        if codings or (lengths and lengths[0] != "0"):
            raise BadRequest("a CONNECT request has no body")
        _check_framing(lengths, codings, head.version)
        if _rememberable(head):
            remember(_AUTHORITIES, head, authority, _MAX_ENTRIES)
        return authority
    if head.target.startswith("/") or head.target == "*":
        raise BadRequest(
            f"{head.target[:64]!r} is origin-form; a request to a proxy must be "
            "absolute-form ('GET http://host/path')"
        )
    _, authority, _ = parse_absolute_uri(head.target)
    if host_header is None:
        if head.version == "HTTP/1.1":
            raise BadRequest("an HTTP/1.1 request needs a Host header")
    else:
        try:
            claimed = parse_authority(host_header, 80, "Host header")
        except AuthorityError as exc:
            raise BadRequest(str(exc)) from None
        if (claimed.host, claimed.port) != (authority.host, authority.port):
            raise BadRequest(
                f"Host header {host_header[:80]!r} disagrees with the request target "
                f"authority {authority.host}:{authority.port}"
            )
    _check_framing(lengths, codings, head.version)
    return authority
