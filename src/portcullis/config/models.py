"""The policy file's schema: pydantic models of docs/semantics.md §5.

Validation checks everything a policy refers to (source groups, catalog
references) so that a mistake is a load error with a line number; loading.py
reads the YAML and locates the errors.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from portcullis.basics.errors import CatalogError, InvalidName, InvalidPattern
from portcullis.basics.hostport import parse_hostport
from portcullis.basics.ip import IPAddress, IPNetwork, is_cidr, parse_address, parse_network
from portcullis.basics.names import normalize_name, parse_pattern
from portcullis.catalog import check_reference
from portcullis.config.access import Auth, IdentityGroup, Quota, check_access
from portcullis.config.chaining import (
    ProxyProtocolListeners,
    RuleUpstream,
    UpstreamProxy,
    check_parent_rules,
)
from portcullis.config.inspect_fields import check_inspectable, check_repository_pattern

# --- field types -----------------------------------------------------------


Network = Annotated[IPNetwork, BeforeValidator(parse_network)]
Address = Annotated[IPAddress, BeforeValidator(parse_address)]
Port = Annotated[int, Field(ge=1, le=65535)]
HostPort = Annotated[str, AfterValidator(lambda v: (parse_hostport(v), v)[1])]


def _check_destination(value: str) -> str:
    """A name, a `*.suffix` pattern or a CIDR; refusals explain what to write."""
    if "/" in value:
        parse_network(value)
        return value
    try:
        parse_pattern(value)
    except InvalidPattern as exc:
        raise ValueError(str(exc)) from None
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


IncludeTag = Literal["deprecated", "delivery", "china", "private", "retired", "unconfirmed"]
_LOOPBACK = ("127.0.0.0/8", "::1/128")


def _default_include() -> list[IncludeTag]:
    return ["deprecated", "delivery"]


class CatalogRef(_Model):
    """A reference to a built-in registry catalog: checked when the policy loads,
    expanded into names when it compiles (policy/engine.py)."""

    catalog: str
    regions: list[str] | None = None
    include: list[IncludeTag] = Field(default_factory=_default_include)
    params: dict[str, str] = Field(default_factory=dict)
    wildcards: bool = False

    @model_validator(mode="after")
    def _selectable(self) -> CatalogRef:
        # Checking here makes an unknown region or a missing placeholder a
        # load error with a line number, not a surprise at the first request.
        try:
            check_reference(self)
        except CatalogError as exc:
            raise ValueError(str(exc)) from None
        return self


def _destination_kind(value: object) -> str:
    return "catalog" if isinstance(value, dict | CatalogRef) else "name"


Destination = Annotated[
    Annotated[Annotated[str, AfterValidator(_check_destination)], Tag("name")]
    | Annotated[CatalogRef, Tag("catalog")],
    Discriminator(_destination_kind),
]


class Listen(_Model):
    explicit: HostPort | None = "127.0.0.1:3128"
    transparent: HostPort | None = None
    admin: HostPort | None = "127.0.0.1:9090"
    explicit_tls: HostPort | None = None  # the explicit listener over TLS (auth.tls)
    # Load balancers in front of a listener that send the PROXY protocol header.
    proxy_protocol: ProxyProtocolListeners = Field(default_factory=ProxyProtocolListeners)

    @model_validator(mode="after")
    def _proxy_protocol_has_listeners(self) -> Listen:
        for mode in ("explicit", "transparent"):
            if getattr(self.proxy_protocol, mode) is not None and getattr(self, mode) is None:
                raise ValueError(f"proxy_protocol.{mode}: there is no `{mode}` listener")
        return self


class Inspect(_Model):
    repositories: list[Annotated[str, AfterValidator(check_repository_pattern)]] = Field(
        min_length=1)
    access: Literal["pull", "push"] = "pull"


class TlsInspection(_Model):
    ca_cert: str
    ca_key: str
    upstream_ca: list[str] = Field(default_factory=list)
    # Leaves live in memory only; a short life bounds what a stolen one is worth.
    leaf_days: int = Field(7, ge=1, le=7)


class Rule(_Model):
    name: str = Field(min_length=1, max_length=128)
    from_: list[str] = Field(alias="from", min_length=1)
    to: list[Destination] = Field(min_length=1)
    ports: list[Port] = Field(default_factory=lambda: [443], min_length=1)
    action: Literal["allow", "deny"] = "allow"
    resolves_to: list[Network] | None = None
    # A CONNECT on a port outside `tls_ports` must still open with a TLS
    # ClientHello (its SNI checked) unless the deciding rule says the tunnel
    # may carry other bytes: an unchecked tunnel reaches whatever the upstream
    # address serves, with any Host or name the client likes.
    raw: bool = False
    # Overrides the policy's `upstream_proxy` for what this rule allows ("direct": none).
    upstream_proxy: RuleUpstream | None = None
    # Decrypt and judge each registry request (docs/semantics.md, "Inspection").
    inspect: Inspect | None = None

    @model_validator(mode="after")
    def _inspectable(self) -> Rule:
        if self.inspect is not None:
            check_inspectable(self.action, self.to)
        return self


class Resolver(_Model):
    servers: list[str] = Field(default_factory=list)
    timeout: float = Field(2.0, gt=0, le=60)
    hosts: dict[str, list[Address]] = Field(default_factory=dict)
    allow_ranges: list[Network] = Field(default_factory=list)
    min_ttl: float = Field(5.0, ge=0)
    max_ttl: float = Field(300.0, ge=0)
    negative_ttl: float = Field(5.0, ge=0)

    @field_validator("hosts")
    @classmethod
    def _normalized_hosts(cls, hosts: dict[str, list[IPAddress]]) -> dict[str, list[IPAddress]]:
        out: dict[str, list[IPAddress]] = {}
        for name, addrs in hosts.items():
            try:
                out[normalize_name(name)] = addrs
            except InvalidName as exc:
                raise ValueError(f"hosts: {exc}") from None
        return out


class Limits(_Model):
    max_connections: int = Field(4096, ge=1)
    header_timeout: float = Field(10.0, gt=0)
    header_bytes: int = Field(16384, ge=1024, le=1 << 20)
    client_hello_timeout: float = Field(10.0, gt=0)
    connect_timeout: float = Field(10.0, gt=0)
    idle_timeout: float = Field(600.0, gt=0)
    drain_timeout: float = Field(30.0, ge=0)


class Transparent(_Model):
    strict: bool = False
    ech: Literal["deny", "allow_outer"] = "deny"


class Log(_Model):
    path: str | None = None


class Policy(_Model):
    version: Literal[1]
    mode: Literal["enforce", "report"] = "enforce"
    listen: Listen = Field(default_factory=Listen)
    sources: dict[str, list[Network]] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)
    default: Literal["allow", "deny"] = "deny"
    resolver: Resolver = Field(default_factory=Resolver)
    limits: Limits = Field(default_factory=Limits)
    transparent: Transparent = Field(default_factory=Transparent)
    tls_ports: list[Port] = Field(default_factory=lambda: [443])
    admin_allow: list[Network] = Field(
        default_factory=lambda: [ipaddress.ip_network(n) for n in _LOOPBACK]
    )
    log: Log = Field(default_factory=Log)
    auth: Auth = Field(default_factory=Auth)
    identities: dict[str, IdentityGroup] = Field(default_factory=dict)
    quotas: dict[str, Quota] = Field(default_factory=dict)
    # A parent proxy every allowed connection goes through (rules may override it).
    upstream_proxy: UpstreamProxy | None = None
    tls_inspection: TlsInspection | None = None

    @model_validator(mode="after")
    def _references_resolve(self) -> Policy:
        check_parent_rules(self.rules, self.upstream_proxy)
        names: set[str] = set()
        for index, rule in enumerate(self.rules):
            if rule.name in names:
                raise ValueError(f"rules[{index}]: the rule name {rule.name!r} is used twice")
            names.add(rule.name)
            for group in rule.from_:
                if group not in self.sources and group not in self.identities \
                        and not is_cidr(group):
                    known = ", ".join(sorted([*self.sources, *self.identities])) or "none defined"
                    raise ValueError(
                        f"rule {rule.name!r}: unknown source group {group!r} "
                        f"(known: {known}); define it under `sources:` or write a CIDR"
                    )
            if rule.inspect is not None and self.tls_inspection is None:
                raise ValueError(
                    f"rule {rule.name!r} inspects, which needs a `tls_inspection:` section"
                    " with ca_cert and ca_key (create them with `portcullis ca init`)"
                )
        check_access(self.sources, self.identities, self.quotas, self.auth,
                     self.listen.explicit_tls)
        return self
