"""Selecting from a catalog: the user's regions, tags and placeholder values
turned into the names to allow (docs/semantics.md §6).

`select` is what `portcullis domains` prints; `select_reference` is what a
policy's catalog reference compiles into, and `check_reference` the same
selection run when the policy loads, so that a reference that cannot be
selected is a policy error.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import Protocol

from portcullis.basics.errors import CatalogError, InvalidPattern
from portcullis.basics.names import parse_pattern
from portcullis.catalog import templates
from portcullis.catalog.loader import load_catalog
from portcullis.catalog.model import DEFAULT_INCLUDE, OPT_IN_TAGS, Catalog, CatalogEntry


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


def select(
    catalog: Catalog,
    *,
    regions: Sequence[str] | None = None,
    include: Collection[str] = DEFAULT_INCLUDE,
    params: Mapping[str, str] | None = None,
    wildcards: bool = False,
) -> list[CatalogEntry]:
    """The names to allow, in catalog order, without repeats.

    `regions` None means every region; entries without a region tag (IBM's
    global delivery hosts, registries without regions) come with any choice.
    An entry carrying opt-in tags is kept only when all of them are in
    `include`. Templates take their values from `params` (comma-separated for
    several), else the catalog's covering wildcard, else CatalogError.
    """
    if regions is not None and not regions:
        raise CatalogError("no region given; name at least one, or leave regions out for all")
    chosen = None if regions is None else {catalog.resolve_region(r).id for r in regions}
    included = _include(include)
    values = _params(catalog, params or {})
    out: dict[str, CatalogEntry] = {}
    for entry in catalog.entries:
        if chosen is not None and entry.regions and chosen.isdisjoint(entry.regions):
            continue
        if not included.issuperset(t for t in entry.tags if t in OPT_IN_TAGS):
            continue
        for item in _expand(catalog, entry, values, wildcards):
            out.setdefault(item.name, item)
    return list(out.values())


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
