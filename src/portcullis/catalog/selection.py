"""Selecting from a catalog: the user's regions, tags and placeholder values
turned into the names to allow (docs/semantics.md §6).

`select` is what `portcullis domains` prints; `select_reference` is what a
policy's catalog reference compiles into, and `check_reference` the same
selection run when the policy loads, so that a reference that cannot be
selected is a policy error.
"""

from __future__ import annotations

import datetime
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from portcullis.basics.errors import CatalogError, InvalidPattern
from portcullis.basics.names import parse_pattern
from portcullis.catalog import templates
from portcullis.catalog.loader import load_catalog
from portcullis.catalog.model import (
    DEFAULT_INCLUDE,
    OPT_IN_TAGS,
    RETIRED,
    Catalog,
    CatalogEntry,
    Region,
)


def today() -> str:
    """The day `select` answers for when no `as_of` is given (UTC)."""
    return datetime.datetime.now(datetime.UTC).date().isoformat()


def check_day(text: str) -> str:
    """`text` as an ISO day (YYYY-MM-DD), or CatalogError."""
    try:
        return datetime.date.fromisoformat(text.strip()).isoformat()
    except ValueError:
        raise CatalogError(f"{text!r} is not a date; write YYYY-MM-DD, e.g. 2025-07-29") from None


def _include(include: Collection[str]) -> frozenset[str]:
    # `unconfirmed` is accepted and changes nothing: those entries are always in.
    unknown = sorted(set(include) - {*OPT_IN_TAGS, "unconfirmed"})
    if unknown:
        raise CatalogError(
            f"cannot include {', '.join(map(repr, unknown))}; the tags that can be "
            f"included are {', '.join(OPT_IN_TAGS)} (entries with other tags always are)"
        )
    return frozenset(include)


def _params(catalog: Catalog, params: Mapping[str, str]) -> dict[str, list[str]]:
    known = {k for e in catalog.entries for k in templates.placeholders(e.name)}
    values: dict[str, list[str]] = {}
    for key, raw in params.items():
        if key not in known:
            offer = (
                f"its placeholders are {', '.join(sorted(known))}"
                if known
                else "it has no placeholders"
            )
            raise CatalogError(f"{catalog.id} has no placeholder <{key}>; {offer}")
        try:
            values[key] = templates.split_values(key, raw)
        except ValueError as exc:
            raise CatalogError(str(exc)) from None
    return values


def _expand(
    catalog: Catalog, entry: CatalogEntry, values: Mapping[str, list[str]], wildcards: bool
) -> list[CatalogEntry]:
    if wildcards and (wildcard := catalog.covering_wildcard(entry.name)) is not None:
        return [wildcard]
    if not entry.is_template:
        return [entry]
    missing = [k for k in templates.placeholders(entry.name) if k not in values]
    if missing:
        # A vendor wildcard stands in for names the user cannot spell yet.
        if (wildcard := catalog.covering_wildcard(entry.name)) is not None:
            return [wildcard]
        needed = " ".join(f"--param {k}=<value>" for k in missing)
        raise CatalogError(f"{catalog.id}: {entry.name!r} needs {needed}")
    out = []
    for name in templates.fill(entry.name, values):
        try:
            pattern = parse_pattern(name)
        except InvalidPattern as exc:
            raise CatalogError(f"{catalog.id}: {entry.name!r} filled in gives {exc}") from None
        out.append(replace(entry, name=str(pattern)))
    return out


@dataclass(frozen=True)
class Selection:
    """What `choose` gives: the names to allow on `day`, and the retired names
    the same choices would have given had `retired` been included."""

    day: str
    entries: list[CatalogEntry] = field(default_factory=list)
    left_out: list[CatalogEntry] = field(default_factory=list)


def _on_day(entry: CatalogEntry, day: str) -> CatalogEntry:
    return replace(entry, tags=(*entry.tags, RETIRED)) if entry.retired_on(day) else entry


def regions_on(catalog: Catalog, day: str) -> tuple[list[Region], list[Region]]:
    """The regions as listed on `day`, and those first listed after it."""
    listed, later = [], []
    for region in catalog.regions:
        shown = region.on(day, catalog.entries)
        if shown is None:
            later.append(region)
        else:
            listed.append(shown)
    return listed, later


def _chosen_regions(catalog: Catalog, regions: Sequence[str] | None, day: str) -> set[str] | None:
    if regions is None:
        return None
    if not regions:
        raise CatalogError("no region given; name at least one, or leave regions out for all")
    chosen = {catalog.resolve_region(r) for r in regions}
    for region in sorted(chosen, key=lambda r: r.id):
        if region.added > day:
            raise CatalogError(f"region {region.id} ({region.name}) was first listed on "
                               f"{region.added}, after {day}")
    return {r.id for r in chosen}


def choose(
    catalog: Catalog,
    *,
    regions: Sequence[str] | None = None,
    include: Collection[str] = DEFAULT_INCLUDE,
    params: Mapping[str, str] | None = None,
    wildcards: bool = False,
    as_of: str | None = None,
) -> Selection:
    """The names to allow on day `as_of` (default today), in catalog order,
    without repeats, and the retired names left out.

    `regions` None means every region; entries without a region tag (IBM's
    global delivery hosts, registries without regions) come with any choice.
    A name not yet listed on the day is never in; one retired by then carries
    the tag `retired`. An entry carrying opt-in tags is kept only when all of
    them are in `include`. Templates take their values from `params`
    (comma-separated for several), else the catalog's covering wildcard, else
    CatalogError.
    """
    day = check_day(as_of) if as_of is not None else today()
    chosen = _chosen_regions(catalog, regions, day)
    included = _include(include)
    values = _params(catalog, params or {})
    out: dict[str, CatalogEntry] = {}
    selection = Selection(day)
    for entry in catalog.entries:
        if chosen is not None and entry.regions and chosen.isdisjoint(entry.regions):
            continue
        if entry.as_of > day:
            continue
        view = _on_day(entry, day)
        wanted = {t for t in view.tags if t in OPT_IN_TAGS}
        if not included.issuperset(wanted):
            # A retired name under a wildcard the user asked for is not missed.
            covered = wildcards and catalog.covering_wildcard(entry.name) is not None
            if RETIRED in wanted and included.issuperset(wanted - {RETIRED}) and not covered:
                selection.left_out.append(view)
            continue
        for item in _expand(catalog, view, values, wildcards):
            out.setdefault(item.name, item)
    selection.entries.extend(out.values())
    return selection


def select(
    catalog: Catalog,
    *,
    regions: Sequence[str] | None = None,
    include: Collection[str] = DEFAULT_INCLUDE,
    params: Mapping[str, str] | None = None,
    wildcards: bool = False,
    as_of: str | None = None,
) -> list[CatalogEntry]:
    """`choose`'s names only."""
    return choose(catalog, regions=regions, include=include, params=params,
                  wildcards=wildcards, as_of=as_of).entries


class Reference(Protocol):
    """A catalog chosen by id or alias, with the choices `select` takes; a
    policy's catalog reference (config.CatalogRef) is one."""

    @property
    def catalog(self) -> str: ...
    @property
    def regions(self) -> Sequence[str] | None: ...
    @property
    def include(self) -> Collection[str]: ...
    @property
    def params(self) -> Mapping[str, str]: ...
    @property
    def wildcards(self) -> bool: ...


def select_reference(ref: Reference) -> list[CatalogEntry]:
    """`select` on the catalog `ref` names, with its choices."""
    return select(
        load_catalog(ref.catalog),
        regions=ref.regions,
        include=ref.include,
        params=ref.params,
        wildcards=ref.wildcards,
    )


def check_reference(ref: Reference) -> None:
    """Raise CatalogError when `ref` names no catalog or cannot be selected.

    The check is the selection itself with its names dropped: anything less
    strict would pass a reference that then fails when the policy compiles.
    """
    select_reference(ref)
