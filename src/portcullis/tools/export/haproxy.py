"""HAProxy: TCP frontends that read the SNI (`req.ssl_sni`), decide with ACLs in
the policy's order, and forward to the address HAProxy resolves for the name.

`tcp-request content accept` would end the rule list before the resolution, so
each rule records its verdict in a variable, only while none is recorded: the
first matching rule wins, as in Portcullis. `-m end .example.com` matches one
or more labels in front and never the apex, exactly `*.example.com`; `-m str`
is an exact name. The file is one of HAProxy's `-f` configuration files (it
has no `global` section of its own).
"""

from __future__ import annotations

from collections.abc import Mapping

from portcullis.tools.export.model import ExportSpec
from portcullis.tools.export.refusals import common_problems, refuse_if, sni_port_problems
from portcullis.tools.export.text import comment_text, header_lines

FORMAT = "haproxy"
OPTIONS = {
    "listen": "address to bind, without the port (default: all addresses)",
    "resolver": "DNS server as ip:port (default: the policy's resolver.servers, else the"
    " host's /etc/resolv.conf)",
}


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def render(spec: ExportSpec, options: Mapping[str, str]) -> str:
    problems = common_problems(spec, FORMAT, cidr_destinations=True)
    refuse_if(FORMAT, problems + sni_port_problems(spec, FORMAT))
    listen = options.get("listen", "")
    servers = [options["resolver"]] if "resolver" in options else list(spec.resolver_servers)
    notes = [
        "Load it with `haproxy -f global.cfg -f THIS_FILE`; HAProxy resolves the SNI name"
        " itself and dials what it got.",
        "Only the ports bound below reach this proxy. CIDR destinations never match an"
        " SNI and are left out. Portcullis's address checks are not part of this export.",
    ]
    out = [f"# {line}" for line in header_lines(spec, FORMAT, notes)]
    out.append("")
    out.append("resolvers portcullis_dns")
    if servers:
        out.extend(f"    nameserver dns{i} {server}" for i, server in enumerate(servers, 1))
    else:
        out.append("    parse-resolv-conf")
    out.append("    hold valid 30s")
    for port in spec.ports():
        out.append("")
        out.append(f"frontend portcullis_{port}")
        out.append("    mode tcp")
        out.append(f"    bind {listen}:{port}")
        out.append("    tcp-request inspect-delay 10s")
        out.append(f"    timeout client {_ms(spec.idle_timeout)}")
        # Portcullis refuses bytes that are not a ClientHello on a TLS port
        # (not_tls) and a ClientHello without SNI (no_sni).
        out.append("    tcp-request content reject unless { req.ssl_hello_type 1 }")
        out.append("    tcp-request content reject unless { req.ssl_sni -m found }")
        out.append("    acl portcullis_decided var(txn.portcullis_verdict) -m found")
        for rule in spec.rules:
            if port not in rule.ports or not (rule.exact or rule.wildcards):
                continue
            acl = f"portcullis_r{rule.index + 1}"
            out.append(f"    # rule {rule.index + 1}: {comment_text(rule.name)} ({rule.action})")
            out.extend(f"    acl {acl}_src src {network}" for network in rule.networks)
            out.extend(f"    acl {acl}_names req.ssl_sni,lower -m str {n}" for n in rule.exact)
            out.extend(
                f"    acl {acl}_names req.ssl_sni,lower -m end .{w}" for w in rule.wildcards
            )
            out.append(
                f"    tcp-request content set-var(txn.portcullis_verdict) str({rule.action})"
                f" if !portcullis_decided {acl}_src {acl}_names"
            )
        verdict = "{ var(txn.portcullis_verdict) -m str allow }"
        if spec.default_allow:
            out.append("    # no rule matched: the default, allow")
            out.append(
                "    tcp-request content reject if { var(txn.portcullis_verdict) -m str deny }"
            )
        else:
            out.append("    # no rule matched: the default, deny")
            out.append(f"    tcp-request content reject unless {verdict}")
        out.append(
            "    tcp-request content do-resolve(txn.portcullis_dst,portcullis_dns,ipv4)"
            " req.ssl_sni,lower"
        )
        out.append("    tcp-request content reject unless { var(txn.portcullis_dst) -m found }")
        out.append("    tcp-request content set-dst var(txn.portcullis_dst)")
        out.append(f"    tcp-request content set-dst-port int({port})")
        out.append("    default_backend portcullis_forward")
    out.append("")
    out.append("backend portcullis_forward")
    out.append("    mode tcp")
    out.append(f"    timeout connect {_ms(spec.connect_timeout)}")
    out.append(f"    timeout server {_ms(spec.idle_timeout)}")
    # 0.0.0.0 sends each connection to its (rewritten) destination address.
    out.append("    server forward 0.0.0.0:0")
    return "\n".join(out) + "\n"
