"""Host names and the patterns that match them (docs/semantics.md §1).

Every name is normalized the same way in rules and on the wire: lowercase, one
trailing dot stripped, IDNA to punycode, label and length limits enforced. A
pattern is an exact name or `*.suffix`, which matches one or more labels in
front of `suffix` and never `suffix` itself.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache

import idna
from publicsuffixlist import PublicSuffixList

from portcullis.basics.errors import InvalidName, InvalidPattern

MAX_LABEL = 63
MAX_NAME = 253

# Letters, digits, hyphen and underscore (service names such as `_dmarc` appear
# in real zones); a label may not start or end with a hyphen.
_ASCII_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")


def _looks_like_ip(text: str) -> bool:
    candidate = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def _check_labels(name: str, original: str) -> None:
    if len(name) > MAX_NAME:
        raise InvalidName(f"{original!r} is {len(name)} characters long; the limit is {MAX_NAME}")
    for label in name.split("."):
        if not label:
            raise InvalidName(f"{original!r} has an empty label")
        if len(label) > MAX_LABEL:
            raise InvalidName(
                f"{original!r} has a label of {len(label)} characters; the limit is {MAX_LABEL}"
            )
        if not _ASCII_LABEL.match(label):
            raise InvalidName(f"{original!r} has an invalid label {label!r}")


@lru_cache(maxsize=65536)
def normalize_name(raw: str) -> str:
    """Return the canonical form of a host name, or raise InvalidName."""
    if not raw:
        raise InvalidName("the name is empty")
    name = raw[:-1] if raw.endswith(".") else raw
    if not name:
        raise InvalidName(f"{raw!r} has no labels")
    if name.isascii():
        name = name.lower()
    else:
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise InvalidName(f"{raw!r} is not a valid internationalized name: {exc}") from None
    _check_labels(name, raw)
    return name


@dataclass(frozen=True, slots=True)
class Pattern:
    """`exact` is a whole name; otherwise `suffix` must be preceded by labels."""

    suffix: str
    wildcard: bool

    def matches(self, name: str) -> bool:
        if not self.wildcard:
            return name == self.suffix
        return name.endswith("." + self.suffix)

    def __str__(self) -> str:
        return f"*.{self.suffix}" if self.wildcard else self.suffix


_ICANN_SUFFIXES = PublicSuffixList(only_icann=True)


def parse_pattern(raw: str) -> Pattern:
    """Parse a rule destination written as a name or `*.suffix`.

    Each refusal says what to write instead, because a policy author who wrote
    `.example.com` (Squid's habit) needs to learn the two patterns it means.
    """
    text = raw.strip()
    if text in ("*", "*.", "**"):
        raise InvalidPattern(
            f"{raw!r} would match every name; list the names you need, "
            "or a wildcard under a domain such as '*.icr.io'"
        )
    if text.startswith("."):
        rest = text.lstrip(".")
        raise InvalidPattern(
            f"{raw!r} is ambiguous; write '{rest}' for the name itself "
            f"and '*.{rest}' for the names under it"
        )
    if _looks_like_ip(text):
        raise InvalidPattern(
            f"{raw!r} is an IP address, not a name; use a CIDR destination such as "
            f"'{text.strip('[]')}/{128 if ':' in text else 32}'"
        )
    wildcard = text.startswith("*.")
    body = text[2:] if wildcard else text
    if "*" in body:
        if text.startswith("*") and not wildcard:
            raise InvalidPattern(
                f"{raw!r} has a partial-label wildcard; write '*.{text.lstrip('*').lstrip('.')}'"
                " for the names under it, or list the names"
            )
        raise InvalidPattern(
            f"{raw!r} has a '*' that is not the whole first label; "
            "only '*.domain' is supported (for example '*.icr.io')"
        )
    if wildcard and not body:
        raise InvalidPattern(f"{raw!r} has nothing after '*.'; write '*.domain'")
    try:
        suffix = normalize_name(body)
    except InvalidName as exc:
        raise InvalidPattern(str(exc)) from None
    if wildcard and _ICANN_SUFFIXES.is_public(suffix):
        raise InvalidPattern(
            f"{raw!r} covers the whole public suffix '{suffix}'; "
            f"write a wildcard under a registered domain such as '*.example.{suffix}'"
        )
    return Pattern(suffix=suffix, wildcard=wildcard)


def parent_suffixes(name: str) -> list[str]:
    """The proper suffixes of `name` on label boundaries, longest first.

    `a.b.icr.io` gives `b.icr.io`, `icr.io`, `io`: the keys under which
    `*.suffix` patterns that match `name` are stored.
    """
    out: list[str] = []
    start = name.find(".")
    while start != -1:
        out.append(name[start + 1 :])
        start = name.find(".", start + 1)
    return out
