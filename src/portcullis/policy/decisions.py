"""The closed sets of decisions and reasons.

Each member's value is the string used in log fields and metric labels, so a
reason reads the same in a 403 body, a JSON log line and a Prometheus series.
"""

from __future__ import annotations

from enum import StrEnum


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

