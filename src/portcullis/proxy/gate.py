"""The gate: a compiled policy with the live parts a decision needs (the
resolver and its cache, the proxy's own addresses), built once per policy and
replaced whole on reload."""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from portcullis.basics.hostport import parse_hostport
from portcullis.basics.ip import IPAddress
from portcullis.config import Policy
from portcullis.config.chaining import UpstreamProxy, rule_parent
from portcullis.config.models import Limits
from portcullis.net.addresses import AddressVerdict
from portcullis.net.resolver import Resolver
from portcullis.policy.engine import Engine
from portcullis.policy.limiter import Quotas
from portcullis.proxy.identify import Authenticator

# The texts of some addresses, and the check of each (proxy/admission.py).
CheckedAddresses = tuple[tuple[str, ...], tuple[AddressVerdict, ...]]


class PathLimits(NamedTuple):
    """`limits:` as plain values. A connection reads several of them on its way,
    and each attribute of a pydantic model is found through the model's
    `__getattr__` hook (about 500 instructions under callgrind with Python 3.11,
    twice a plain attribute's time when timed hot)."""

    max_connections: int
    header_timeout: float
    header_bytes: int
    client_hello_timeout: float
    connect_timeout: float
    idle_timeout: float
    drain_timeout: float

    @classmethod
    def of(cls, limits: Limits) -> PathLimits:
        # Every field: a field added to Limits and not here fails here, at start-up.
        return cls(**limits.model_dump())


class Gate:
    """A compiled policy with the live parts a decision needs; replaced whole on reload.

    A handler reads `state.gate` once per decision, so established tunnels and
    decisions in flight keep the policy they started with.
    """

    def __init__(self, policy: Policy, engine: Engine | None = None,
                 resolver: Resolver | None = None, *, quotas: Quotas | None = None,
                 authenticator: Authenticator | None = None) -> None:
        self.policy = policy
        self.engine = engine if engine is not None else Engine(policy)
        self.resolver = resolver if resolver is not None else build_resolver(policy)
        self.report_mode = policy.mode == "report"
        # What a connection reads of the policy, as plain values (PathLimits says why).
        self.limits = PathLimits.of(policy.limits)
        self.tls_ports = frozenset(policy.tls_ports)
        self.default_deny = policy.default == "deny"
        # The parent of what each rule allows (by rule index), and of the rest.
        self.rule_parents = tuple(rule_parent(r.upstream_proxy, policy.upstream_proxy)
                                  for r in policy.rules)
        self.default_parent: UpstreamProxy | None = policy.upstream_proxy
        self.allow_ranges = tuple(policy.resolver.allow_ranges)
        self.own = frozenset(listen_addresses(policy))
        # Address checks already made under this gate's ranges (admission._check).
        self.checks: dict[tuple[int, int], tuple[object, object, CheckedAddresses]] = {}
        # A transparent listener on this host means nftables redirect rules that
        # must not catch the proxy's own upstream connections: those carry the mark.
        self.mark_upstream = policy.listen.transparent is not None
        # Raises PasswordFileError for a bad password file: a reload keeps the old gate.
        self.authenticator = authenticator or Authenticator(policy.auth)
        # Open tunnels are counted across reloads: the limiter outlives the gate.
        self.quotas = quotas if quotas is not None else Quotas(policy.quotas)

    def replaced_by(self, policy: Policy, engine: Engine) -> Gate:
        """The gate for a reloaded policy; the resolver (and its cache) stays when it
        can, so do the verified logins, and the quotas keep counting."""
        same = policy.resolver == self.policy.resolver
        authenticator = self.authenticator if policy.auth == self.policy.auth else None
        gate = Gate(policy, engine, self.resolver if same else None, quotas=self.quotas,
                    authenticator=authenticator)
        self.quotas.configure(policy.quotas)
        return gate


def build_resolver(policy: Policy) -> Resolver:
    settings = policy.resolver
    return Resolver(
        servers=settings.servers,
        timeout=settings.timeout,
        hosts={name: [str(a) for a in addrs] for name, addrs in settings.hosts.items()},
        min_ttl=settings.min_ttl,
        max_ttl=settings.max_ttl,
        negative_ttl=settings.negative_ttl,
    )


def listen_addresses(policy: Policy) -> list[IPAddress]:
    """The proxy's own specific listen addresses (wildcards say nothing)."""
    out: list[IPAddress] = []
    for text in (policy.listen.explicit, policy.listen.transparent, policy.listen.admin):
        if text is None:
            continue
        host, _ = parse_hostport(text)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            continue
        if not address.is_unspecified:
            out.append(address)
    return out
