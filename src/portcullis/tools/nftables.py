"""The nftables ruleset that sends workers' registry traffic to the transparent listener.

One table, `inet portcullis`, serves both set-ups (deploy/nftables/README.md):
- gateway: workers route through this host; `prerouting` redirects them;
- same host: Portcullis runs where the clients run; `output` redirects local
  processes, and Portcullis's own upstream connections are exempt by their
  socket mark (SOCKET_MARK, set when it has CAP_NET_ADMIN) and optionally by uid.
The text starts by creating and deleting the table, so loading it again
replaces the previous version in one transaction instead of adding duplicates.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass

from portcullis.basics.errors import NftablesError
from portcullis.basics.hostport import parse_hostport
from portcullis.basics.ip import IPNetwork, parse_network
from portcullis.config import Policy
from portcullis.net.sockets import SOCKET_MARK

TABLE = "portcullis"
HTTP_PORT = 80
QUIC_PORT = 443


@dataclass(frozen=True, slots=True)
class Plan:
    listen_port: int
    # None: the listener is a wildcard, so `redirect` (to the arriving
    # interface's address) reaches it; otherwise `dnat` to exactly this address.
    listen_v4: ipaddress.IPv4Address | None
    listen_v6: ipaddress.IPv6Address | None
    accepts_v4: bool
    accepts_v6: bool
    sources_v4: tuple[ipaddress.IPv4Network, ...]
    sources_v6: tuple[ipaddress.IPv6Network, ...]
    ports: tuple[int, ...]
    exempt_uid: int | None


def worker_sources(policy: Policy) -> list[IPNetwork]:
    """Every client network a rule names: the traffic Portcullis must see to decide on."""
    out: list[IPNetwork] = []
    for rule in policy.rules:
        for ref in rule.from_:
            if ref in policy.identities:
                continue  # a redirected client proves no identity: no rule of it applies
            out.extend(policy.sources[ref] if ref in policy.sources else [parse_network(ref)])
    return out


def plan(policy: Policy, *, exempt_uid: int | None = None) -> Plan:
    if policy.listen.transparent is None:
        raise NftablesError(
            "the policy has no transparent listener; add `listen: {transparent: 0.0.0.0:3129}`"
            " (or [::]:3129 for IPv4 and IPv6)"
        )
    host, port = parse_hostport(policy.listen.transparent)
    if port == 0:
        raise NftablesError(
            f"listen.transparent {policy.listen.transparent!r} has port 0; a redirect needs"
            " a fixed port"
        )
    address = ipaddress.ip_address(host.strip("[]"))
    wildcard = address.is_unspecified
    # A wildcard IPv6 listener is dual-stack (listeners.bind_listener clears V6ONLY).
    accepts_v4 = address.version == 4 or wildcard
    accepts_v6 = address.version == 6
    sources = worker_sources(policy)
    v4 = [n for n in sources if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in sources if isinstance(n, ipaddress.IPv6Network)]
    if not v4 and not v6:
        raise NftablesError("no rule names a client network (`from:`), so no worker to redirect")
    ports = set(policy.tls_ports)
    if any(r.action == "allow" and HTTP_PORT in r.ports for r in policy.rules):
        ports.add(HTTP_PORT)
    return Plan(
        listen_port=port,
        listen_v4=address if isinstance(address, ipaddress.IPv4Address) and not wildcard else None,
        listen_v6=address if isinstance(address, ipaddress.IPv6Address) and not wildcard else None,
        accepts_v4=accepts_v4,
        accepts_v6=accepts_v6,
        # nft refuses overlapping interval elements; collapsing also sorts.
        sources_v4=tuple(ipaddress.collapse_addresses(v4)),
        sources_v6=tuple(ipaddress.collapse_addresses(v6)),
        ports=tuple(sorted(ports)),
        exempt_uid=exempt_uid,
    )


def _set(name: str, kind: str, networks: tuple[IPNetwork, ...]) -> list[str]:
    return [
        f"    set {name} {{",
        f"        type {kind}",
        "        flags interval",
        f"        elements = {{ {', '.join(str(n) for n in networks)} }}",
        "    }",
    ]


def _families(p: Plan) -> list[tuple[str, str, bool, str]]:
    """(match keyword, set, listener accepts it, nat statement) per family with workers."""
    out = []
    if p.sources_v4:
        target = f"dnat ip to {p.listen_v4}:{p.listen_port}" if p.listen_v4 else None
        out.append(("ip", "@workers4", p.accepts_v4, target or f"redirect to :{p.listen_port}"))
    if p.sources_v6:
        target = f"dnat ip6 to [{p.listen_v6}]:{p.listen_port}" if p.listen_v6 else None
        out.append(("ip6", "@workers6", p.accepts_v6, target or f"redirect to :{p.listen_port}"))
    return out


def render(p: Plan, source: str = "the policy") -> str:
    ports = "{ " + ", ".join(str(port) for port in p.ports) + " }"
    mark = f"0x{SOCKET_MARK:08x}"
    exempt = [f"        meta mark {mark} return"]
    if p.exempt_uid is not None:
        exempt.append(f"        meta skuid {p.exempt_uid} return")
    lines = [
        f"# Generated by `portcullis nftables` from {source}.",
        f"# Workers' TCP {', '.join(map(str, p.ports))} goes to the transparent listener on"
        f" port {p.listen_port};",
        "# their UDP 443 (QUIC) is dropped so clients fall back to TCP.",
        f"# Portcullis's own connections carry meta mark {mark} and are never redirected.",
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
    ]
    if p.sources_v4:
        lines += _set("workers4", "ipv4_addr", p.sources_v4)
    if p.sources_v6:
        lines += _set("workers6", "ipv6_addr", p.sources_v6)
    families = _families(p)
    redirects = [
        f"        {kw} saddr {name} tcp dport {ports} {nat}"
        for kw, name, ok, nat in families if ok
    ]
    # A family the listener cannot accept is refused rather than let past Portcullis.
    refusals = [
        f"        {kw} saddr {name} tcp dport {ports} reject with tcp reset"
        for kw, name, ok, _ in families if not ok
    ]
    quic = [f"        {kw} saddr {name} udp dport {QUIC_PORT} drop" for kw, name, _, _ in families]
    lines += [
        "    # Gateway: traffic routed through this host.",
        "    chain prerouting {",
        "        type nat hook prerouting priority dstnat; policy accept;",
        *redirects,
        "    }",
        "    # Same host: this host's own processes, except Portcullis itself.",
        "    chain output {",
        # -100 is dstnat; nft 1.0.6 accepts that keyword in the inet family for prerouting only.
        "        type nat hook output priority -100; policy accept;",
        *exempt,
        *redirects,
        "    }",
        "    chain forward_filter {",
        "        type filter hook forward priority filter; policy accept;",
        *quic,
        *refusals,
        "    }",
        "    chain output_filter {",
        "        type filter hook output priority filter; policy accept;",
        *exempt,
        *quic,
        *refusals,
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def ruleset(policy: Policy, *, exempt_uid: int | None = None, source: str = "the policy") -> str:
    return render(plan(policy, exempt_uid=exempt_uid), source)


def load(text: str, *, check_only: bool = False) -> None:
    """Load (or with `check_only`, validate) a ruleset with `nft -f`; NftablesError on failure."""
    argv = ["nft", *(["-c"] if check_only else []), "-f", "-"]
    try:
        result = subprocess.run(
            argv, input=text, capture_output=True, text=True, timeout=30, check=False
        )
    except FileNotFoundError:
        raise NftablesError("`nft` is not installed (apt-get install nftables)") from None
    if result.returncode != 0:
        raise NftablesError(f"nft -f failed (exit {result.returncode}):\n{result.stderr.strip()}")
