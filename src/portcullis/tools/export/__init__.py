"""Export a policy to other firewalls' configurations, one module per format.

Each module has `render(spec, options) -> str`, raising ExportRefused for
what the target cannot express (see refusals.py); `render` also refuses what
Portcullis does at run time that the format would silently drop, and `warnings`
lists what it leaves out without changing a decision (runtime.py). `FORMATS` names them for the
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
from portcullis.tools.export.runtime import refuse_runtime, runtime_warnings

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
    refuse_runtime(fmt, spec.runtime)
    return FORMATS[fmt](spec, options)


def warnings(fmt: str, spec: ExportSpec) -> list[str]:
    """What an export of `spec` leaves out without changing a decision (for stderr)."""
    return runtime_warnings(fmt, spec.runtime)


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
    "warnings",
]
