"""What a format cannot express, found before anything is written.

`ExportRefused` carries the problems; the command prints them and exits 2,
because a silently widened or narrowed export is worse than none.
"""

from __future__ import annotations

from collections.abc import Sequence

from portcullis.basics.errors import ExportRefused
from portcullis.tools.export.model import ExportSpec


def common_problems(
    spec: ExportSpec, fmt: str, *, cidr_destinations: bool, default_allow: bool = True
) -> list[str]:
    """What no format here can carry (report mode, resolves_to), and the
    optional features a format declares it lacks."""
    problems: list[str] = []
    if spec.mode == "report":
        problems.append(
            f"mode: report lets would-be denials through and logs them; {fmt} has no such"
            " mode here. Export a policy with mode: enforce"
        )
    for rule in spec.rules:
        if rule.resolves_to is not None:
            problems.append(
                f"rule {rule.name!r} has resolves_to, a check of the addresses a name"
                f" resolves to, which {fmt} cannot make; remove it to export"
            )
        if rule.cidrs and not cidr_destinations:
            cidrs = ", ".join(str(c) for c in rule.cidrs)
            problems.append(
                f"rule {rule.name!r} has CIDR destinations ({cidrs}); Portcullis applies them"
                f" only to clients that ask for an IP address, which {fmt} cannot tell from"
                " the addresses of an allowed name"
            )
    if spec.default_allow and not default_allow:
        problems.append(
            f"default: allow cannot be expressed in {fmt}, which can only allow listed names;"
            " write default: deny and allow the names"
        )
    return problems


def sni_port_problems(spec: ExportSpec, fmt: str) -> list[str]:
    """An SNI router reads the name from a TLS ClientHello, so it cannot serve
    a rule on a plain-HTTP port, where Portcullis reads the Host header."""
    return [
        f"rule {rule.name!r} covers port {port}, which is not in tls_ports; {fmt} routes"
        " by TLS SNI and cannot read an HTTP Host header"
        for rule in spec.rules
        for port in rule.ports
        if port not in spec.tls_ports
    ]


def refuse_if(fmt: str, problems: Sequence[str]) -> None:
    if problems:
        # The same exception shows up once per port and source class; say it once.
        raise ExportRefused(fmt, list(dict.fromkeys(problems)))
