"""nginx: a `stream {}` block that forwards TLS by SNI (ssl_preread), for a
file included in nginx.conf's main context (with ngx_stream_module loaded).

nginx's `map ... { hostnames; }` does not go in order: it takes the exact name,
else the longest `*.suffix` (which, as in Portcullis, matches one or more
labels and not the apex). The first-match decisions are therefore computed
here per key (tables.NameTable) and written as a map per source class and
port; `geo` gives each client its class by longest prefix, as Portcullis does.
A denied connection goes to an upstream whose only server is `down`, so nginx
closes it without dialling anything.
"""

from __future__ import annotations

from collections.abc import Mapping

from portcullis.tools.export.model import ExportSpec
from portcullis.tools.export.refusals import common_problems, refuse_if, sni_port_problems
from portcullis.tools.export.tables import applicable, decides_allow, name_table, source_classes
from portcullis.tools.export.text import header_lines

FORMAT = "nginx"
OPTIONS = {
    "listen": "address to listen on, without the port (default: all addresses)",
    "resolver": "DNS server nginx resolves the forwarded names with (default: the policy's"
    " resolver.servers, else 127.0.0.1)",
}
_DENY = "portcullis_deny"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(spec: ExportSpec, options: Mapping[str, str]) -> str:
    # SNI never carries an IP address (RFC 6066), so CIDR destinations cannot
    # match here; Portcullis would not match them on a name either.
    problems = common_problems(spec, FORMAT, cidr_destinations=True)
    refuse_if(FORMAT, problems + sni_port_problems(spec, FORMAT))
    resolver = options.get("resolver") or " ".join(spec.resolver_servers) or "127.0.0.1"
    listen = options.get("listen", "")
    classes = source_classes(spec)
    notes = [
        "Include in nginx.conf's main context; needs ngx_stream_module"
        " (Debian: libnginx-mod-stream).",
        "Only connections to the ports listed below reach this proxy; rules for other"
        " ports are not exported. CIDR destinations never match an SNI and are left out.",
        "Portcullis's address checks (forbidden ranges, allow_ranges) are not part of"
        " this export.",
    ]
    out = [f"# {line}" for line in header_lines(spec, FORMAT, notes)]
    out.append("stream {")
    out.append(f"    resolver {resolver} valid=30s;")
    out.append(f"    upstream {_DENY} {{ server 127.0.0.1:1 down; }}")
    out.append("")
    out.append("    # source class by longest matching prefix; 'none': in no source group")
    out.append("    geo $portcullis_source {")
    out.append("        default none;")
    for cls in classes:
        out.append(f"        # {cls.key}: {', '.join(sorted(cls.groups))}")
        out.extend(f"        {network} {cls.key};" for network in cls.networks)
    out.append("    }")
    for port in spec.ports():
        allow_value = f"$ssl_preread_server_name:{port}"
        routes: list[str] = []
        for key, groups in [*((c.key, c.groups) for c in classes), ("none", frozenset())]:
            rules = applicable(spec, groups, port)
            table = name_table(rules)
            variable = f"$portcullis_p{port}_{key}"
            routes.append(f"        {key} {variable};")
            out.append("")
            out.append(f"    map $ssl_preread_server_name {variable} {{")
            out.append("        hostnames;")
            # A ClientHello without SNI: Portcullis refuses it (no_sni).
            out.append(f'        "" {_DENY};')
            entries = [
                *((name, rule) for name, rule in table.exact.items()),
                *((f"*.{suffix}", rule) for suffix, rule in table.wildcard.items()),
            ]
            for pattern, rule in entries:
                value = allow_value if decides_allow(rule, spec.default_allow) else _DENY
                out.append(f"        {_quote(pattern)} {value};")
            out.append(f"        default {allow_value if spec.default_allow else _DENY};")
            out.append("    }")
        out.append("")
        out.append(f"    map $portcullis_source $portcullis_p{port} {{")
        out.extend(routes)
        out.append("    }")
        out.append("")
        out.append("    server {")
        out.append(f"        listen {listen + ':' if listen else ''}{port};")
        out.append("        ssl_preread on;")
        out.append(f"        proxy_pass $portcullis_p{port};")
        out.append("    }")
    out.append("}")
    return "\n".join(out) + "\n"
