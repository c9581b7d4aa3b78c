"""The policy's links to the network around Portcullis (docs/semantics.md §5):
a parent proxy it chains to (`upstream_proxy`, globally or per rule) and the
load balancers in front of its listeners (`listen.proxy_protocol`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, model_validator

from portcullis.basics.hostport import format_hostport
from portcullis.basics.ip import IPNetwork, parse_network
from portcullis.config.credentials import CredentialsFile

if TYPE_CHECKING:
    from portcullis.config.models import Rule

Network = Annotated[IPNetwork, BeforeValidator(parse_network)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class UpstreamProxy(_Model):
    """A parent proxy: Portcullis decides, then asks it to `CONNECT name:port`."""

    url: str
    # A file holding `user:password` for Basic authentication; read when the
    # policy loads and again when it changes (config/credentials.py), never logged.
    credentials: str | None = None
    # https:// parents: the CA bundle to verify the parent's certificate with,
    # instead of the system's.
    ca: str | None = None
    _credentials: CredentialsFile | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"url": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _usable(self) -> UpstreamProxy:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{self.url!r}: write http://HOST:PORT or"
                             " https://HOST:PORT")
        if parts.username is not None or parts.password is not None:
            raise ValueError("credentials do not belong in the URL, where they"
                             " would be logged; put 'user:password' in a file and name it"
                             " under `credentials:`")
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None or parts.path not in ("", "/") \
                or parts.query or parts.fragment:
            raise ValueError(f"{self.url!r}: write {parts.scheme}://HOST:PORT,"
                             " with the port and nothing after it")
        if self.ca is not None and parts.scheme != "https":
            raise ValueError("`ca` applies to an https:// parent only")
        if self.ca is not None and not os.access(self.ca, os.R_OK):
            raise ValueError(f"cannot read the CA bundle {self.ca}")
        if self.credentials is not None:
            self._credentials = CredentialsFile(self.credentials)
        return self

    @property
    def host(self) -> str:
        return str(urlsplit(self.url).hostname)

    @property
    def port(self) -> int:
        return int(urlsplit(self.url).port or 0)

    @property
    def tls(self) -> bool:
        return self.url.startswith("https:")

    @property
    def authorization(self) -> str | None:
        """The `Proxy-Authorization` value, when credentials are configured; the
        file's current content (a stat at most once a second)."""
        return self._credentials.value() if self._credentials is not None else None

    @property
    def credentials_problem(self) -> str | None:
        """Why the credentials file's current content is not the one sent, if so."""
        return self._credentials.problem if self._credentials is not None else None

    def __str__(self) -> str:
        # What logs and `explain` show: never the credentials.
        return f"{'https' if self.tls else 'http'}://{format_hostport(self.host, self.port)}"


# A rule's own parent, or "direct": dial, whatever the policy's parent.
RuleUpstream = UpstreamProxy | Literal["direct"]


class ProxyProtocol(_Model):
    """A listener behind load balancers that send the PROXY protocol header."""

    from_: list[Network] = Field(alias="from", min_length=1)
    # true: every connection must come from `from` and carry the header.
    # false: connections from elsewhere are served as they come (their peer is the client).
    required: bool = True


class ProxyProtocolListeners(_Model):
    explicit: ProxyProtocol | None = None
    transparent: ProxyProtocol | None = None


def rule_parent(own: RuleUpstream | None, default: UpstreamProxy | None) -> UpstreamProxy | None:
    """The parent what a rule allows goes through: its own (`direct`: none), else the
    policy's; None to dial directly."""
    if own is None:
        return default
    return own if isinstance(own, UpstreamProxy) else None


def check_parent_rules(rules: Sequence[Rule], default: UpstreamProxy | None) -> None:
    """Refuse an allow rule that says `resolves_to` and goes through a parent:
    the parent resolves the name itself, so the check could not be kept."""
    for rule in rules:
        parent = rule_parent(rule.upstream_proxy, default)
        if rule.action == "allow" and rule.resolves_to is not None and parent is not None:
            raise ValueError(
                f"rule {rule.name!r}: `resolves_to` cannot be enforced through the parent"
                f" proxy {parent}, which resolves the name itself; drop `resolves_to`, or"
                " say `upstream_proxy: direct` on the rule")
