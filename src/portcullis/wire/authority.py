"""`host[:port]` as it appears in CONNECT targets, absolute URIs and Host headers.

The host becomes the name the policy decides on, so anything that another
parser could read differently is refused rather than interpreted: userinfo
(`user@host`), percent-encoding, unbracketed IPv6, and the numeric shorthands
that inet_aton accepts (`127.1`, `0x7f000001`) but that look like names.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from portcullis.basics.errors import AuthorityError
from portcullis.basics.names import normalize_name

_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class Authority:
    # A normalized name (lowercase, punycode, no trailing dot), or an IP
    # address in its canonical text form without brackets.
    host: str
    port: int
    is_ip: bool


def _numeric_label(label: str) -> bool:
    if not label.isascii():
        return False
    if label[:2] in ("0x", "0X"):
        return all(c in _HEX for c in label[2:])
    return label.isdigit()


def _parse_host(text: str, what: str) -> tuple[str, bool]:
    if not text:
        raise AuthorityError(f"{what} has an empty host")
    # WHATWG URL's "ends in a number" rule: such a host is an IPv4 address
    # or nothing; never a name, or `127.1` would pass the policy as a name
    # and reach loopback through a resolver that accepts the shorthand.
    if _numeric_label(text.rstrip(".").rpartition(".")[2]):
        try:
            return str(ipaddress.IPv4Address(text)), True
        except ValueError:
            raise AuthorityError(
                f"{what} host {text[:64]!r} looks numeric but is not a dotted-quad IPv4 address"
            ) from None
    try:
        return normalize_name(text), False
    except ValueError as exc:
        # normalize_name raises InvalidName; idna may raise other UnicodeErrors.
        raise AuthorityError(f"{what} has an invalid host name: {exc}") from None


def _parse_port(text: str | None, default: int | None, what: str, whole: str) -> int:
    if not text:
        if default is None:
            raise AuthorityError(f"{what} {whole[:80]!r} has no port; CONNECT needs host:port")
        # RFC 3986 §3.2.3: an empty port after ':' means the scheme's default.
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise AuthorityError(f"{what} port {text[:16]!r} is not a number from 1 to 65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise AuthorityError(f"{what} port {port} is out of range 1-65535")
    return port


@functools.lru_cache(maxsize=4096)
def parse_authority(text: str, default_port: int | None, what: str) -> Authority:
    """Parse `host[:port]`; `default_port=None` makes the port mandatory.

    `what` names the source ("CONNECT target", "Host header") in messages.
    Cached (an Authority is immutable): clients ask for the same few registry
    hosts over and over, and parsing one showed in per-connection profiles.
    """
    if not text:
        raise AuthorityError(f"{what} is empty")
    if "@" in text:
        raise AuthorityError(f"{what} {text[:80]!r} carries userinfo ('user@'); send the host only")
    if "%" in text:
        raise AuthorityError(f"{what} {text[:80]!r} is percent-encoded; send the host as is")
    port_text: str | None
    if text[0] == "[":
        close = text.find("]")
        if close < 0:
            raise AuthorityError(f"{what} {text[:80]!r} has an unclosed '['")
        try:
            host = ipaddress.IPv6Address(text[1:close]).compressed
        except ValueError:
            raise AuthorityError(
                f"{what} {text[:80]!r}: brackets must hold an IPv6 address"
            ) from None
        rest = text[close + 1 :]
        if rest and rest[0] != ":":
            raise AuthorityError(f"{what} {text[:80]!r} has text after ']' that is not ':port'")
        port = _parse_port(rest[1:] or None, default_port, what, text)
        return Authority(host, port, True)
    host_text, colon, port_text = text.rpartition(":")
    if not colon:
        host_text, port_text = text, None
    elif ":" in host_text:
        raise AuthorityError(f"{what} {text[:80]!r}: write IPv6 addresses in brackets, [::1]:443")
    host, is_ip = _parse_host(host_text, what)
    return Authority(host, _parse_port(port_text, default_port, what, text), is_ip)
