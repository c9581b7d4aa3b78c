"""Export a policy to other firewalls' configurations, one module per format.

Each module has `render(spec, options) -> str`, raising ExportRefused for
what the target cannot express (see refusals.py). `FORMATS` names them for the
command line; `OPTIONS` lists the `--option KEY=VALUE` each one accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from portcullis.basics.errors import ExportRefused
from portcullis.tools.export import (
    aws_network_firewall,
    azure_firewall,
    calico,
    cilium,
    envoy,
    haproxy,
    nginx,
    squid,
)
from portcullis.tools.export.build import spec_from_file, spec_from_names, spec_from_policy
from portcullis.tools.export.model import ExportSpec

Renderer = Callable[[ExportSpec, Mapping[str, str]], str]

FORMATS: dict[str, Renderer] = {
    "squid": squid.render,
    "nginx": nginx.render,
    "haproxy": haproxy.render,
    "envoy": envoy.render,
    "cilium": cilium.render,
    "calico": calico.render,
    "aws-network-firewall": aws_network_firewall.render,
    "azure-firewall": azure_firewall.render,
}

OPTIONS: dict[str, dict[str, str]] = {
    "squid": {},
    "nginx": nginx.OPTIONS,
    "haproxy": haproxy.OPTIONS,
    "envoy": envoy.OPTIONS,
    "cilium": cilium.OPTIONS,
    "calico": calico.OPTIONS,
    "aws-network-firewall": aws_network_firewall.OPTIONS,
    "azure-firewall": azure_firewall.OPTIONS,
}


def render(fmt: str, spec: ExportSpec, options: Mapping[str, str] | None = None) -> str:
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS[fmt]))
    if unknown:
        known = ", ".join(f"{k} ({v})" for k, v in OPTIONS[fmt].items()) or "none"
        raise ExportRefused(fmt, [f"unknown option {', '.join(unknown)}; {fmt} takes: {known}"])
    return FORMATS[fmt](spec, options)


__all__ = [
    "FORMATS",
    "OPTIONS",
    "ExportRefused",
    "ExportSpec",
    "aws_network_firewall",
    "azure_firewall",
    "calico",
    "cilium",
    "envoy",
    "haproxy",
    "nginx",
    "render",
    "spec_from_file",
    "spec_from_names",
    "spec_from_policy",
    "squid",
]
