"""The closed sets every layer speaks: decisions, reasons, close reasons, modes.

Each member's value is the string used in log fields and metric labels, so a
reason reads the same in a 403 body, a JSON log line, a Prometheus series,
`learn` and `check`'s diagnosis.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Decision(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    # A would-deny let through because the policy runs in `mode: report`.
    REPORT = "report"


class Reason(StrEnum):
    RULE_ALLOW = "rule_allow"
    RULE_DENY = "rule_deny"
    NO_RULE = "no_rule"
    SOURCE_UNKNOWN = "source_unknown"
    PORT_NOT_ALLOWED = "port_not_allowed"
    ADDRESS_FORBIDDEN = "address_forbidden"
    RESOLVES_OUTSIDE = "resolves_outside"
    DNS_FAILURE = "dns_failure"
    SNI_MISMATCH = "sni_mismatch"
    NO_SNI = "no_sni"
    ECH_PRESENT = "ech_present"
    NOT_TLS = "not_tls"
    ORIGINAL_DST_MISMATCH = "original_dst_mismatch"
    BAD_REQUEST = "bad_request"
    BAD_NAME = "bad_name"
    HEADER_TOO_LARGE = "header_too_large"
    HEADER_TIMEOUT = "header_timeout"
    CONNECT_FAILED = "connect_failed"
    CONNECT_TIMEOUT = "connect_timeout"
    OVER_CAPACITY = "over_capacity"
    DRAINING = "draining"
    # Identities and quotas (docs/semantics.md §11, §12).
    AUTH_REQUIRED = "auth_required"
    AUTH_FAILED = "auth_failed"
    RATE_LIMITED = "rate_limited"
    # A parent proxy (`upstream_proxy`) answered the CONNECT with a non-2xx status.
    PARENT_REFUSED = "parent_refused"
    # A parent proxy could not be reached, timed out, or did not answer in HTTP.
    PARENT_FAILED = "parent_failed"
    # A PROXY-protocol listener: the header is missing, malformed or too slow.
    PROXY_HEADER = "proxy_header"
    # A PROXY-protocol listener that requires the header: the peer is not a listed balancer.
    BALANCER_UNKNOWN = "balancer_unknown"
    # Inside an inspected connection (docs/semantics.md, "Inspection"): one
    # request refused, the connection kept.
    REPOSITORY_DENIED = "repository_denied"
    METHOD_DENIED = "method_denied"
    SCOPE_DENIED = "scope_denied"
    PATH_DENIED = "path_denied"
    # An inspected connection that could not be set up or spoke something else.
    CLIENT_UNTRUSTED_CA = "client_untrusted_ca"
    CLIENT_TLS = "client_tls"
    UPSTREAM_TLS = "upstream_tls"
    NOT_HTTP1 = "not_http1"


# The refusals `mode: report` turns into `report` (allowed and logged): those
# that a policy author tunes (rules, ports, sources, what the client says in
# its ClientHello, the original destination). Every other refusal is a deny
# in both modes: the proxy cannot or must not go on (bad input, no name, an
# address that is unsafe or outside the rule's `resolves_to`, DNS or connect
# failures, capacity, drain). docs/decisions.md explains each; the admission
# path (proxy/admission.py) is the only reader of this table.
REPORTABLE: Final = frozenset(
    {
        Reason.RULE_DENY,
        Reason.NO_RULE,
        Reason.SOURCE_UNKNOWN,
        Reason.PORT_NOT_ALLOWED,
        Reason.SNI_MISMATCH,
        Reason.NO_SNI,
        Reason.ECH_PRESENT,
        Reason.NOT_TLS,
        Reason.ORIGINAL_DST_MISMATCH,
        Reason.REPOSITORY_DENIED,
        Reason.METHOD_DENIED,
        Reason.SCOPE_DENIED,
        Reason.PATH_DENIED,
        # No credentials where an identity would let the request through: what
        # `source_unknown` is for addresses. Wrong credentials are a deny.
        Reason.AUTH_REQUIRED,
    }
)


class CloseReason(StrEnum):
    """Why a relayed connection ended (the close record's `close_reason`)."""

    DONE = "done"
    CLOSED = "closed"
    CLIENT_GONE = "client_gone"
    CLIENT_RESET = "client_reset"
    UPSTREAM_RESET = "upstream_reset"
    IDLE_TIMEOUT = "idle_timeout"
    BAD_REQUEST = "bad_request"
    CANCELLED = "cancelled"
    ERROR = "error"


class Mode(StrEnum):
    """The listener (and protocol) a connection came through: the log's `mode`."""

    EXPLICIT = "explicit"
    TRANSPARENT = "transparent"
    HTTP = "http"
    # The explicit listener served over TLS (`listen.explicit_tls`).
    EXPLICIT_TLS = "explicit_tls"
