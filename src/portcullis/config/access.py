"""Who a client is and how much it may take: identities, the proof they bring
(`auth:`) and per-group quotas (docs/semantics.md §11, §12).

Kept apart from models.py so the policy's older sections read as they did;
`Policy` checks the references between them (`check_access`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from portcullis.basics.ip import is_cidr


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def check_identity(value: str) -> str:
    # A password-file user or a certificate's SAN/CN: printable, no spaces, so a
    # log line or a 407 body never carries a control byte from a policy either.
    if not value or len(value) > 253 or not all("!" <= c <= "~" for c in value):
        raise ValueError(
            f"{value!r} is not an identity: write 1 to 253 printable ASCII characters, no spaces"
        )
    return value


IdentityName = Annotated[str, AfterValidator(check_identity)]


class IdentityGroup(_Model):
    """A source group whose members are identities, optionally only from addresses."""

    names: list[IdentityName] = Field(min_length=1)
    # Source groups or CIDRs the identity must also come from; None: any address.
    from_: list[str] | None = Field(None, alias="from", min_length=1)


class ServerTLS(_Model):
    """The certificate `listen.explicit_tls` serves, and the CA of client certificates."""

    certificate: str = Field(min_length=1)
    key: str = Field(min_length=1)
    client_ca: str | None = None


class Auth(_Model):
    passwords: str | None = None  # `user:hash` lines written by `portcullis passwd`
    # Sent inside a quoted-string: no quote, no backslash, printable ASCII.
    realm: str = Field("portcullis", pattern=r"^[ -!#-\[\]-~]{1,64}$")
    tls: ServerTLS | None = None
    # How long a verified user:password is trusted without running the hash again.
    cache_seconds: float = Field(600.0, ge=0)


class Quota(_Model):
    """Limits of one group: concurrent tunnels and new connections per second."""

    max_tunnels: int | None = Field(None, ge=1)
    rate: float | None = Field(None, gt=0)  # new connections per second, refilled
    burst: int | None = Field(None, ge=1)  # the bucket's size; default max(1, rate)
    per: Literal["group", "member"] = "group"  # member: each identity or address its own

    @model_validator(mode="after")
    def _limits_something(self) -> Quota:
        if self.max_tunnels is None and self.rate is None:
            raise ValueError("a quota needs max_tunnels, rate, or both")
        if self.burst is not None and self.rate is None:
            raise ValueError("burst is the size of the rate's bucket: set rate too")
        return self


def check_access(
    sources: Mapping[str, object],
    identities: Mapping[str, IdentityGroup],
    quotas: Mapping[str, Quota],
    auth: Auth,
    explicit_tls: str | None,
) -> None:
    """Refuse references that point nowhere; each message says what to write."""
    for name, group in identities.items():
        if name in sources:
            raise ValueError(f"identities: {name!r} is also a source group; use another name")
        for ref in group.from_ or ():
            _known(ref, sources, f"identities.{name}.from")
    if identities and auth.passwords is None and (auth.tls is None or auth.tls.client_ca is None):
        raise ValueError(
            "identities need a way to prove them: set auth.passwords (a file written by"
            " `portcullis passwd`) or auth.tls.client_ca with listen.explicit_tls"
        )
    if (explicit_tls is None) != (auth.tls is None):
        raise ValueError("listen.explicit_tls and auth.tls go together: the TLS listener"
                         " serves auth.tls.certificate")
    for name in quotas:
        if name not in sources and name not in identities:
            raise ValueError(f"quotas: {name!r} is no source group or identity group"
                             f" (known: {', '.join(sorted([*sources, *identities])) or 'none'})")


def _known(ref: str, groups: Sequence[str] | Mapping[str, object], where: str) -> None:
    if ref not in groups and not is_cidr(ref):
        raise ValueError(f"{where}: unknown source group {ref!r}; define it under"
                         " `sources:` or write a CIDR")
