"""What `explain` is asked: the one set of parameters `portcullis explain` and
admin `/explain` share, checked the same way for both.

Each refused value is a `BadParameter` naming the parameter; the CLI prints it
as `--path`, the admin listener as `query parameter 'path'` with a 400. The
target (`to`) is checked on the admission path itself (proxy/explaining.py),
where `host[:port]` is parsed for a connection too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from portcullis.basics.errors import BadParameter, BadRequest
from portcullis.basics.ip import IPAddress, unmap
from portcullis.config.access import check_identity
from portcullis.wire.http1 import KNOWN_METHODS
from portcullis.wire.oci import classify

# In the order a usage message lists them.
PARAMETERS = ("from", "to", "sni", "identity", "path", "method")
_REQUIRED = frozenset({"from", "to"})


@dataclass(frozen=True, slots=True)
class ExplainQuery:
    source: IPAddress
    target: str
    sni: str | None = None
    identity: str | None = None  # as if the client had proven it
    path: str | None = None  # a registry request to judge as an inspecting rule would
    method: str = "GET"

    @classmethod
    def of(cls, source: str, target: str, *, sni: str | None = None,
           identity: str | None = None, path: str | None = None,
           method: str | None = None) -> ExplainQuery:
        """Checked values, or BadParameter naming the first one refused."""
        try:
            client = unmap(ipaddress.ip_address(source))
        except ValueError:
            raise BadParameter("from", f"is not an IP address ({source[:64]!r})") from None
        if identity is not None:
            try:
                check_identity(identity)
            except ValueError as exc:
                raise BadParameter("identity", f"is refused: {exc}") from None
        if method is not None and path is None:
            raise BadParameter("method", "needs path: a method is judged with a request")
        verb = (method or "GET").upper()
        if verb not in KNOWN_METHODS or verb == "CONNECT":
            known = ", ".join(sorted(KNOWN_METHODS - {"CONNECT"}))
            raise BadParameter("method", f"is not a method of a registry request"
                                         f" ({(method or '')[:32]!r}; one of {known})")
        if path is not None:
            try:
                classify(verb, path)
            except BadRequest as exc:
                # What the inspecting proxy would answer 400, whatever the rule.
                raise BadParameter("path", f"is refused ({path[:100]!r}): {exc}") from None
        return cls(client, target, sni, identity, path, verb)


def query_error(exc: BadParameter) -> str:
    """The admin listener's 400 message for a refused parameter."""
    return f"query parameter '{exc.parameter}' {exc}"


def parse_explain_query(params: Mapping[str, Sequence[str]]) -> ExplainQuery:
    """The admin listener's query string (parsed by `parse_qs`), each parameter
    given at most once and never empty; BadParameter otherwise."""
    for name in params:
        if name not in PARAMETERS:
            raise BadParameter(name, "is unknown; known parameters: " + ", ".join(PARAMETERS))
    one: dict[str, str] = {}
    for name in PARAMETERS:
        values = params.get(name, [])
        if name in _REQUIRED and (len(values) != 1 or not values[0]):
            what = "repeated" if len(values) > 1 else "missing"
            raise BadParameter(name, f"{what}; use ?from=IP&to=HOST[:PORT]")
        if len(values) > 1 or (values and not values[0]):
            raise BadParameter(name, "is repeated or empty; give one value")
        if values:
            one[name] = values[0]
    return ExplainQuery.of(one["from"], one["to"], sni=one.get("sni"),
                           identity=one.get("identity"), path=one.get("path"),
                           method=one.get("method"))
