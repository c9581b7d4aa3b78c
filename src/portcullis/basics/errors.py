"""Every exception Portcullis raises on purpose, in one tree.

    PortcullisError
    ├── ConfigError            what an operator wrote cannot be used (exit 2)
    │   ├── ProblemsError      one line per problem, all found in one pass
    │   │   ├── PolicyError    a policy file: one located line per problem
    │   │   └── ExportRefused  a policy another firewall's format cannot express
    │   ├── CatalogError       a catalog, region, tag or parameter
    │   ├── ListenError        a listen address that cannot be bound
    │   ├── PasswordFileError  a password file that cannot be read or written
    │   └── NftablesError      a policy that cannot become a redirect
    ├── InvalidInput           a value refused before it means anything (ValueError)
    │   ├── InvalidName        a host name that cannot be normalized
    │   ├── InvalidPattern     a rule pattern; the message says what to write
    │   ├── AuthorityError     a host[:port] that is not one
    │   ├── LearnError         logs that give `learn` nothing to learn from
    │   └── BadParameter       an `explain` parameter (`parameter` names it)
    ├── Refusal                a request that ends at the proxy: `reason`, `status`
    │   ├── HttpError          a request head refused before any decision (ValueError)
    │   │   ├── BadRequest           400
    │   │   ├── HeaderTooLarge       431
    │   │   └── NotImplementedMethod 501
    │   ├── ClientHelloError   the first bytes of a TLS connection (ValueError)
    │   │   ├── NotTLS
    │   │   └── MalformedClientHello
    │   ├── AuthError          407: missing or wrong proxy credentials (`identity` tried)
    │   ├── QuotaExceeded      429 / 503: a group over its rate or its tunnels
    │   ├── ProxyHeaderError   a PROXY protocol header (ValueError)
    │   └── ParentAnswerError  a parent proxy's answer to CONNECT that is not HTTP (ValueError)
    ├── DnsFailure             a name that did not resolve: `kind` says how
    ├── NoOriginalDestination  no redirect record for a connection (OSError)
    └── ToolError              an operator tool's step failed (`check`)

A `Refusal` carries the reason logged (a `vocabulary.Reason`) and the HTTP
status answered, so every layer refuses the same way and the proxy turns any
refusal into one answer and one record. The ValueError and OSError bases are
kept where callers (and the fuzz tests' contract) expect them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from portcullis.basics.vocabulary import Reason


class PortcullisError(Exception):
    """The root: anything Portcullis raises on purpose."""


# --- configuration -----------------------------------------------------------


class ConfigError(PortcullisError):
    """What an operator wrote cannot be used; the message says what to write."""


class ProblemsError(ConfigError):
    """A refusal with one line per problem (`problems`), all found in one pass, so an
    operator fixes every one of them before trying again."""

    def __init__(self, summary: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"{summary}: " + "; ".join(self.problems))


class PolicyError(ProblemsError):
    """A policy that cannot be loaded; each problem reads "LINE: field: message"."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        super().__init__(source, problems)

    def __str__(self) -> str:
        # Located problems print as compilers print them: "FILE:LINE: field: message".
        return "\n".join(
            f"{self.source}:{p}" if p[:1].isdigit() else f"{self.source}: {p}"
            for p in self.problems
        )


class CatalogError(ConfigError, ValueError):
    """A catalog, region, tag or parameter that cannot be used; says what works."""


class ListenError(ConfigError):
    """A listen address that cannot be bound; the message names it and why."""


class ExportRefused(ProblemsError):
    """The policy says something the target format cannot; one line per problem."""

    def __init__(self, fmt: str, problems: Sequence[str]) -> None:
        self.fmt = fmt
        super().__init__(f"cannot export to {fmt}", problems)

    def __str__(self) -> str:
        return "\n".join([f"cannot export to {self.fmt}:", *(f"  {p}" for p in self.problems)])


class PasswordFileError(ConfigError):
    """A password file (`auth.passwords`) that cannot be read, parsed or written;
    the message names the file, the line and the problem."""


class NftablesError(ConfigError):
    """The policy cannot be turned into a redirect; the message says what to add."""


# --- input values --------------------------------------------------------------


class InvalidInput(PortcullisError, ValueError):
    """A value refused before it means anything; the message names the problem."""


class InvalidName(InvalidInput):
    """A host name that cannot be normalized; the message says why."""


class InvalidPattern(InvalidInput):
    """A rule pattern that is refused; the message says what to write instead."""


class AuthorityError(InvalidInput):
    """An authority (`host[:port]`) that is refused; the message names the problem."""


class LearnError(InvalidInput):
    """Logs that give nothing to learn from; the message says why."""


class BadParameter(InvalidInput):
    """An `explain` parameter that is refused; `parameter` is its name (`path`,
    `identity`), which `portcullis explain` prints as `--path` and admin
    `/explain` as `query parameter 'path'`."""

    def __init__(self, parameter: str, message: str) -> None:
        self.parameter = parameter
        super().__init__(message)


# --- refusals ------------------------------------------------------------------


class Refusal(PortcullisError):
    """The request ends here: `status` for an HTTP answer, `reason` for the log."""

    status: int = 403
    reason: Reason = Reason.BAD_REQUEST

    def __init__(
        self, message: str, *, reason: Reason | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        if status is not None:
            self.status = status


class HttpError(Refusal, ValueError):
    """A request head refused before any policy decision."""

    status = 400
    reason = Reason.BAD_REQUEST


class BadRequest(HttpError):
    """Malformed or ambiguous request: answer 400."""


class HeaderTooLarge(HttpError):
    """No end of head within the size limit: answer 431."""

    status = 431
    reason = Reason.HEADER_TOO_LARGE


class NotImplementedMethod(HttpError):
    """A well-formed method the proxy does not know: answer 501."""

    status = 501


class ClientHelloError(Refusal, ValueError):
    """The first bytes of a TLS connection, refused; `reason` is what the proxy logs."""

    reason = Reason.NOT_TLS


class NotTLS(ClientHelloError):
    """The first bytes are not a TLS handshake record."""


class MalformedClientHello(ClientHelloError):
    """A TLS handshake that is not a well-formed, unambiguous ClientHello."""

    reason = Reason.BAD_REQUEST


class AuthError(Refusal):
    """Proxy credentials missing or wrong: answer 407 with `Proxy-Authenticate`.

    `identity` is the user name the client tried (never the secret), for the log.
    """

    status = 407
    reason = Reason.AUTH_FAILED

    def __init__(self, message: str, *, identity: str | None = None,
                 reason: Reason | None = None) -> None:
        super().__init__(message, reason=reason)
        self.identity = identity


class QuotaExceeded(Refusal):
    """A group over its quota: 429 for its rate, 503 for its concurrent tunnels."""

    status = 503
    reason = Reason.OVER_CAPACITY

    def __init__(self, message: str, *, group: str, limit: str) -> None:
        rate = limit == "rate"
        super().__init__(message, reason=Reason.RATE_LIMITED if rate else Reason.OVER_CAPACITY,
                         status=429 if rate else 503)
        self.group = group
        self.limit = limit  # "rate" or "tunnels": the metric's label
class ProxyHeaderError(Refusal, ValueError):
    """A PROXY protocol header (v1 or v2) that is missing, malformed or not TCP."""

    status = 400
    reason = Reason.PROXY_HEADER


class ParentAnswerError(Refusal, ValueError):
    """A parent proxy's answer to CONNECT that is not an HTTP status line and head."""

    status = 502
    reason = Reason.PARENT_FAILED


# --- the network ---------------------------------------------------------------

DnsFailureKind = Literal["nxdomain", "no_answer", "timeout", "servfail", "error"]


class DnsFailure(PortcullisError):
    """A name that did not resolve; `kind` says how."""

    def __init__(self, name: str, kind: DnsFailureKind, detail: str = "") -> None:
        self.name = name
        self.kind: DnsFailureKind = kind
        super().__init__(f"resolving {name}: {kind}" + (f" ({detail})" if detail else ""))


class NoOriginalDestination(PortcullisError, OSError):
    """The kernel has no redirect record for this connection (no conntrack entry)."""


# --- operator tools --------------------------------------------------------------


class ToolError(PortcullisError):
    """An operator tool's step failed; subclasses carry what the tool reports."""


__all__ = [
    "AuthError", "AuthorityError", "BadRequest", "CatalogError", "ClientHelloError",
    "ConfigError", "DnsFailure", "DnsFailureKind", "ExportRefused", "HeaderTooLarge",
    "HttpError", "InvalidInput", "InvalidName", "InvalidPattern", "LearnError", "ListenError",
    "MalformedClientHello", "NftablesError", "NoOriginalDestination", "NotImplementedMethod",
    "NotTLS", "ParentAnswerError", "PasswordFileError", "PolicyError", "PortcullisError",
    "ProblemsError", "ProxyHeaderError", "QuotaExceeded", "Refusal", "ToolError",
]
