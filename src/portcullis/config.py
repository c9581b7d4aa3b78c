"""The policy file: pydantic models of DESIGN §2, and loading with located errors.

A load error names the file, the line and the field, and says what is expected,
because the person reading it is editing YAML at 3 a.m. with pulls failing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from portcullis.basics.errors import InvalidName, InvalidPattern, PolicyError
from portcullis.basics.hostport import parse_hostport
from portcullis.basics.ip import IPAddress, IPNetwork, is_cidr, parse_address, parse_network
from portcullis.basics.names import normalize_name, parse_pattern

DEFAULT_POLICY_RESOURCE = "default-policy.yaml"


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


IncludeTag = Literal["deprecated", "delivery", "china", "private", "unconfirmed"]
_LOOPBACK = ("127.0.0.0/8", "::1/128")


def _default_include() -> list[IncludeTag]:
    return ["deprecated", "delivery"]


class CatalogRef(_Model):
    """A reference to a built-in registry catalog, expanded when the policy loads."""

    catalog: str
    regions: list[str] | None = None
    include: list[IncludeTag] = Field(default_factory=_default_include)
    params: dict[str, str] = Field(default_factory=dict)
    wildcards: bool = False

    @model_validator(mode="after")
    def _expands(self) -> CatalogRef:
        # Expanding here makes an unknown region or a missing placeholder a
        # load error with a line number, not a surprise at the first request.
        self.expand()
        return self

    def expand(self) -> list[str]:
        from portcullis.basics.errors import CatalogError
        from portcullis.catalog import load_catalog, select

        try:
            catalog = load_catalog(self.catalog)
            entries = select(
                catalog,
                regions=self.regions,
                include=self.include,
                params=self.params,
                wildcards=self.wildcards,
            )
        except CatalogError as exc:
            raise ValueError(str(exc)) from None
        return [entry.name for entry in entries]


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


class Rule(_Model):
    name: str = Field(min_length=1, max_length=128)
    from_: list[str] = Field(alias="from", min_length=1)
    to: list[Destination] = Field(min_length=1)
    ports: list[Port] = Field(default_factory=lambda: [443], min_length=1)
    action: Literal["allow", "deny"] = "allow"
    resolves_to: list[Network] | None = None


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

    @model_validator(mode="after")
    def _references_resolve(self) -> Policy:
        names: set[str] = set()
        for index, rule in enumerate(self.rules):
            if rule.name in names:
                raise ValueError(f"rules[{index}]: the rule name {rule.name!r} is used twice")
            names.add(rule.name)
            for group in rule.from_:
                if group not in self.sources and not is_cidr(group):
                    known = ", ".join(sorted(self.sources)) or "none defined"
                    raise ValueError(
                        f"rule {rule.name!r}: unknown source group {group!r} "
                        f"(known: {known}); define it under `sources:` or write a CIDR"
                    )
        return self


# --- loading with line numbers ----------------------------------------------


@dataclass(frozen=True, slots=True)
class _Located:
    line: int
    children: dict[object, _Located]


def _locate(node: yaml.Node) -> _Located:
    children: dict[object, _Located] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            children[key.value] = _locate(value)
            # Errors about a key itself (extra field) point at the key's line.
            children[("key", key.value)] = _Located(key.start_mark.line + 1, {})
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            children[index] = _locate(item)
    return _Located(node.start_mark.line + 1, children)


def _line_of(root: _Located | None, loc: Iterable[object]) -> int | None:
    if root is None:
        return None
    node = root
    parts = list(loc)
    for i, part in enumerate(parts):
        if i == len(parts) - 1 and ("key", part) in node.children:
            return node.children[("key", part)].line
        child = node.children.get(part)
        if child is not None:
            node = child
        # Segments that are not in the YAML (union tags such as 'catalog')
        # are skipped: the deepest real node is the best line we have.
    return node.line


def _format_loc(loc: Iterable[object]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("name", "catalog") and out.endswith("]"):
            continue  # union tags from Destination, meaningless to a user
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _describe(error: Any) -> str:
    message = str(error["msg"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field; check its spelling and indentation"
    if kind == "missing":
        return "required field is missing"
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return message


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate a policy document, raising PolicyError with locations."""
    try:
        root_node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{mark.line + 1}" if mark is not None else "?"
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(source, [f"{where}: not valid YAML: {problem}"]) from None
    if not isinstance(data, dict):
        raise PolicyError(source, ["1: expected a mapping with `version: 1` and `rules:`"])
    located = _locate(root_node) if root_node is not None else None
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = error["loc"]
            line = _line_of(located, loc)
            problems.append(f"{line or '?'}: {_format_loc(loc)}: {_describe(error)}")
        raise PolicyError(source, problems) from None


def load_policy(path: str | Path | None) -> Policy:
    """Load a policy file, or the embedded default policy when `path` is None."""
    if path is None:
        text = resources.files("portcullis").joinpath(DEFAULT_POLICY_RESOURCE).read_text()
        return parse_policy(text, "<embedded default policy>")
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(str(file), [f"cannot read the file: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise PolicyError(str(file), ["the file is not UTF-8 text"]) from None
    return parse_policy(text, str(file))
