"""What a loaded registry catalog is: its entries, regions and sources, and the tags.

The loader (loader.py) builds these from data/*.yaml; selection (selection.py)
turns one into the names to allow. They are plain frozen values: nothing here
reads a file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from portcullis.basics.errors import CatalogError
from portcullis.basics.names import parse_pattern
from portcullis.catalog import templates

# Tags that leave an entry out unless asked for; the first two are asked for by
# default because the IBM doc requires them for a working pull. `retired` is
# never written in a data file: selection adds it to an entry whose `retired`
# date has come (a name the registry no longer lists).
OPT_IN_TAGS = ("deprecated", "delivery", "china", "private", "retired")
DEFAULT_INCLUDE = ("deprecated", "delivery")
RETIRED = "retired"
# What role a host plays in a pull (OCI distribution: API, token realm, blobs).
ROLE_TAGS = ("api", "token", "blob", "signature")
KNOWN_TAGS = frozenset((*OPT_IN_TAGS, *ROLE_TAGS, "unconfirmed")) - {RETIRED}
REGION_TAG = "region:"


@dataclass(frozen=True, slots=True)
class Source:
    id: str
    title: str
    url: str | None
    as_of: str


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """A name (exact, `*.suffix` or template) with the tags that select it.

    `as_of` is the day the vendor first listed the name (the earliest we could
    confirm); `retired` the day its list dropped it, `retired_by` the source
    that says so.
    """

    name: str
    tags: tuple[str, ...]
    source: str
    as_of: str
    retired: str | None = None
    retired_by: str | None = None

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(t[len(REGION_TAG) :] for t in self.tags if t.startswith(REGION_TAG))

    @property
    def is_template(self) -> bool:
        return templates.is_template(self.name)

    def listed_on(self, day: str) -> bool:
        """Whether the vendor listed the name on `day` (ISO dates compare as text)."""
        return self.as_of <= day and not self.retired_on(day)

    def retired_on(self, day: str) -> bool:
        return self.retired is not None and self.retired <= day

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "name": self.name,
            "tags": list(self.tags),
            "source": self.source,
            "as_of": self.as_of,
        }
        if self.retired is not None:
            out["retired"] = self.retired
            out["retired_by"] = self.retired_by
        return out


@dataclass(frozen=True, slots=True)
class Region:
    id: str
    name: str
    aliases: tuple[str, ...]
    # Derived from the entries, so the table and the names cannot disagree.
    addresses: tuple[str, ...]
    deprecated: tuple[str, ...]
    added: str  # the day its first registry address was listed

    def on(self, day: str, entries: tuple[CatalogEntry, ...]) -> Region | None:
        """The region as the vendor listed it on `day`; None before it existed."""
        if self.added > day:
            return None
        listed = {e.name for e in entries if e.listed_on(day)}
        return replace(self, addresses=tuple(n for n in self.addresses if n in listed),
                       deprecated=tuple(n for n in self.deprecated if n in listed))


@dataclass(frozen=True, slots=True)
class Catalog:
    id: str
    title: str
    aliases: tuple[str, ...]
    as_of: str
    sources: tuple[Source, ...]
    regions: tuple[Region, ...]
    entries: tuple[CatalogEntry, ...]
    wildcards: tuple[CatalogEntry, ...]
    _region_keys: Mapping[str, Region] = field(repr=False, compare=False, hash=False)

    def resolve_region(self, text: str) -> Region:
        """A region by id, doc name ("US South") or host ("us.icr.io"), any case."""
        region = self._region_keys.get(region_key(text))
        if region is not None:
            return region
        if not self.regions:
            raise CatalogError(
                f"{self.id} has no regions, so {text!r} cannot be selected; "
                "leave the region out (--all-regions)"
            )
        valid = ", ".join(r.id for r in self.regions)
        raise CatalogError(
            f"unknown region {text!r} in {self.id}; valid ids: {valid} "
            "(doc names such as 'US South' and hosts such as 'us.icr.io' work too)"
        )

    def covering_wildcard(self, name: str) -> CatalogEntry | None:
        """The first recommended wildcard that covers `name`, if any."""
        for wildcard in self.wildcards:
            if templates.covers(parse_pattern(wildcard.name), name):
                return wildcard
        return None


def region_key(text: str) -> str:
    """The key a region is looked up by, from any of the ways a user writes it."""
    # "US South", "us_south" and "us-south" are the same region to a user.
    return re.sub(r"[\s_]+", "-", text.strip().casefold()).rstrip(".")

