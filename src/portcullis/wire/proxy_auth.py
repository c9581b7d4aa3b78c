"""`Proxy-Authorization: Basic` (RFC 7617), sans-IO: a header value in, the
credentials out, or an AuthError (407) naming the problem and, when it could be
read, the user tried. The password is never in a message or a repr.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from portcullis.basics.errors import AuthError

# Longer than any user:password worth hashing; refusing it keeps a client from
# making the proxy hash megabytes.
MAX_CREDENTIALS = 1024


@dataclass(frozen=True, slots=True)
class BasicCredentials:
    user: str
    password: str = field(repr=False)


def parse_proxy_authorization(values: tuple[str, ...]) -> BasicCredentials | None:
    """The credentials in a request's Proxy-Authorization fields; None when it has none."""
    if not values:
        return None
    if len(values) > 1:
        raise AuthError(f"{len(values)} Proxy-Authorization fields; send exactly one")
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "basic":
        raise AuthError(f"Proxy-Authorization scheme {scheme[:20]!r}: this proxy takes Basic")
    token = token.strip()
    if len(token) > MAX_CREDENTIALS:
        raise AuthError(f"Proxy-Authorization over {MAX_CREDENTIALS} characters")
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise AuthError("Proxy-Authorization: Basic needs base64 of user:password in UTF-8"
                        ) from None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        raise AuthError("Proxy-Authorization: Basic needs user:password")
    if not all("!" <= c <= "~" for c in user):
        raise AuthError("Proxy-Authorization: the user name has characters outside"
                        " printable ASCII")
    return BasicCredentials(user, password)
