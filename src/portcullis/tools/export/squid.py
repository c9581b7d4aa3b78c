"""Squid: ACLs and `http_access` lines, for a file `include`d where the
http_access rules go (Debian's squid.conf includes /etc/squid/conf.d/*.conf there).

Squid's http_access is first match, like Portcullis, so rules translate in
order, one line each. The difference is the wildcard: Squid's `.example.com`
also matches `example.com`. A rule with `*.example.com` therefore gets a
second ACL of the apexes it must not match, negated on its line. Squid 5
refuses an ACL holding both `.example.com` and a name under it, so names a
wildcard of the same rule already covers are left out (they match anyway).
`-n` keeps dstdomain from a reverse lookup when a client asks for an IP.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from portcullis.basics.ip import IPNetwork
from portcullis.tools.export.model import ExportRule, ExportSpec
from portcullis.tools.export.refusals import common_problems, refuse_if
from portcullis.tools.export.text import comment_text, header_lines

FORMAT = "squid"

# A CONNECT or URL host that is an IPv4 or IPv6 literal. Portcullis applies CIDR
# destinations only to such requests, while Squid's `dst` would also match a
# name whose addresses fall in the range.
_IP_LITERAL = (r"^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$", r"^\[?[0-9a-fA-F:.]+\]?$")


def _under(name: str, suffixes: set[str]) -> bool:
    return any(name.endswith("." + s) for s in suffixes)


def _names_acl(rule: ExportRule) -> tuple[list[str], list[str]]:
    """(dstdomain values, apexes to exclude) that together match the rule's names."""
    wild = set(rule.wildcards)
    values = [f".{w}" for w in rule.wildcards if not _under(w, wild)]
    values += [n for n in rule.exact if n not in wild and not _under(n, wild)]
    apexes = [w for w in rule.wildcards if not _under(w, wild) and w not in rule.exact]
    return values, apexes


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_V4_ANY = ipaddress.IPv4Network("0.0.0.0/0")
_V6_ANY = ipaddress.IPv6Network("::/0")


def _squid_networks(networks: tuple[IPNetwork, ...]) -> list[str]:
    """CIDRs as Squid matches them. Squid holds IPv4 clients as IPv4-mapped IPv6,
    so an IPv6 range over ::ffff:0:0/96 would also take IPv4 clients, which
    Portcullis never matches against IPv6 ranges: that block is cut out. Squid
    also refuses 0.0.0.0/0 ("use all"), and `all` means both families."""
    if _V4_ANY in networks and _V6_ANY in networks:
        return ["all"]
    out: list[str] = []
    for network in networks:
        if network == _V4_ANY:
            out += ["0.0.0.0/1", "128.0.0.0/1"]
        elif isinstance(network, ipaddress.IPv6Network) and _MAPPED.subnet_of(network):
            out += [str(n) for n in sorted(network.address_exclude(_MAPPED))]
        else:
            out.append(str(network))
    return out


def render(spec: ExportSpec, options: Mapping[str, str]) -> str:
    refuse_if(FORMAT, common_problems(spec, FORMAT, cidr_destinations=True))
    out = [f"# {line}" for line in header_lines(spec, FORMAT, [
        "Include this file where the http_access rules go: its last line decides every"
        " request the rules before it did not.",
        "Portcullis's own checks (forbidden addresses, allow_ranges, SNI = CONNECT host,"
        " TLS on tls_ports) are not part of this export.",
    ])]
    uses_ip_literal = any(rule.cidrs for rule in spec.rules)
    if uses_ip_literal:
        out.append("")
        out.extend(f"acl portcullis_ip_literal dstdom_regex -n {r}" for r in _IP_LITERAL)
    for rule in spec.rules:
        acl = f"portcullis_r{rule.index + 1}"
        out.append("")
        out.append(f"# rule {rule.index + 1}: {comment_text(rule.name)} ({rule.action})")
        out.extend(f"acl {acl}_src src {network}" for network in _squid_networks(rule.networks))
        out.extend(f"acl {acl}_port port {port}" for port in rule.ports)
        values, apexes = _names_acl(rule)
        out.extend(f"acl {acl}_names dstdomain -n {value}" for value in values)
        out.extend(f"acl {acl}_apex dstdomain -n {apex}" for apex in apexes)
        out.extend(f"acl {acl}_cidr dst {cidr}" for cidr in rule.cidrs)
        if values:
            line = f"http_access {rule.action} {acl}_src {acl}_port {acl}_names"
            out.append(line + (f" !{acl}_apex" if apexes else ""))
        if rule.cidrs:
            out.append(
                f"http_access {rule.action} {acl}_src {acl}_port portcullis_ip_literal {acl}_cidr"
            )
    out.append("")
    out.append("# everything else: the policy's default")
    out.append(f"http_access {spec.default} all")
    return "\n".join(out) + "\n"
