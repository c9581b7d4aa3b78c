"""Registry catalogs: the names each registry needs, loaded from data/*.yaml.

Each file is checked when it loads (schema, tags, sources, every name through
`parse_pattern`), so a typo in shipped data fails the test suite instead of
silently narrowing somebody's firewall. `select` (selection.py) turns a catalog
plus the user's choices into the names to allow.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Annotated

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from portcullis.basics.errors import CatalogError, InvalidPattern
from portcullis.basics.names import parse_pattern
from portcullis.catalog import templates
from portcullis.catalog.model import (
    KNOWN_TAGS,
    REGION_TAG,
    Catalog,
    CatalogEntry,
    Region,
    Source,
    region_key,
)


def _iso(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime.date) else value


# YAML reads 2025-07-29 as a date; a month ("2025-08") is allowed when the
# source names no day.
AsOf = Annotated[str, BeforeValidator(_iso), Field(pattern=r"^\d{4}-\d{2}(-\d{2})?$")]
# An entry's dates are days: `domains --as-of DAY` compares them.
Day = Annotated[str, BeforeValidator(_iso), Field(pattern=r"^\d{4}-\d{2}-\d{2}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _SourceModel(_Model):
    id: str
    title: str
    url: str | None = None
    as_of: AsOf


class _RegionModel(_Model):
    id: str
    name: str
    aliases: list[str] = []


class _EntryModel(_Model):
    name: str
    tags: list[str] = []
    source: str
    as_of: Day
    retired: Day | None = None
    retired_by: str | None = None


class _FileModel(_Model):
    id: str
    title: str
    aliases: list[str] = []
    as_of: AsOf
    sources: list[_SourceModel] = Field(min_length=1)
    regions: list[_RegionModel] = []
    entries: list[_EntryModel] = Field(min_length=1)
    wildcards: list[_EntryModel] = []


def _check_name(file: str, name: str, *, wildcard_only: bool = False) -> None:
    text = templates.sample(name) if templates.is_template(name) else name
    try:
        pattern = parse_pattern(text)
    except InvalidPattern as exc:
        raise CatalogError(f"{file}: {name!r} is not a valid name: {exc}") from None
    if str(pattern) != text:
        raise CatalogError(f"{file}: write {name!r} in canonical form ({pattern})")
    if wildcard_only and not pattern.wildcard:
        raise CatalogError(f"{file}: recommended wildcard {name!r} must be '*.domain'")


def _entry(file: str, raw: _EntryModel, regions: set[str], sources: set[str]) -> CatalogEntry:
    _check_name(file, raw.name)
    for tag in raw.tags:
        if tag.startswith(REGION_TAG):
            if tag[len(REGION_TAG) :] not in regions:
                raise CatalogError(f"{file}: {raw.name}: {tag} names no region of this file")
        elif tag not in KNOWN_TAGS:
            raise CatalogError(f"{file}: {raw.name}: unknown tag {tag!r}")
    if raw.source not in sources:
        raise CatalogError(f"{file}: {raw.name}: unknown source {raw.source!r}")
    if (raw.retired is None) != (raw.retired_by is None):
        raise CatalogError(f"{file}: {raw.name}: write retired and retired_by together")
    if raw.retired is not None:
        if raw.retired_by not in sources:
            raise CatalogError(f"{file}: {raw.name}: unknown source {raw.retired_by!r}")
        if raw.retired <= raw.as_of:
            raise CatalogError(f"{file}: {raw.name}: retired {raw.retired} before listed "
                               f"{raw.as_of}")
    return CatalogEntry(raw.name, tuple(raw.tags), raw.source, raw.as_of, raw.retired,
                        raw.retired_by)


def _region(file: str, raw: _RegionModel, entries: Sequence[CatalogEntry]) -> Region:
    mine = [e for e in entries if raw.id in e.regions and not e.is_template]
    addresses = tuple(
        e.name for e in mine if "api" in e.tags and not {"deprecated", "private"} & set(e.tags)
    )
    deprecated = tuple(e.name for e in mine if "deprecated" in e.tags)
    firsts = [e.as_of for e in mine if e.name in addresses] or [e.as_of for e in mine]
    if not firsts:
        raise CatalogError(f"{file}: region {raw.id} has no entries")
    return Region(raw.id, raw.name, tuple(raw.aliases), addresses, deprecated, min(firsts))


def _region_keys(
    file: str, regions: Sequence[Region], entries: Sequence[CatalogEntry]
) -> dict[str, Region]:
    keys: dict[str, Region] = {}
    for region in regions:
        hosts = [e.name for e in entries if e.regions == (region.id,) and not e.is_template]
        for alias in (region.id, region.name, *region.aliases, *hosts):
            key = region_key(alias)
            if keys.setdefault(key, region) is not region:
                raise CatalogError(f"{file}: {alias!r} names both {keys[key].id} and {region.id}")
    return keys


def _build(file: str, raw: _FileModel) -> Catalog:
    region_ids = {r.id for r in raw.regions}
    source_ids = {s.id for s in raw.sources}
    entries = tuple(_entry(file, e, region_ids, source_ids) for e in raw.entries)
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CatalogError(f"{file}: listed more than once: {', '.join(dupes)}")
    wildcards = []
    for raw_wildcard in raw.wildcards:
        _check_name(file, raw_wildcard.name, wildcard_only=True)
        wildcard = _entry(file, raw_wildcard, region_ids, source_ids)
        pattern = parse_pattern(wildcard.name)
        if not any(templates.covers(pattern, e.name) for e in entries):
            raise CatalogError(f"{file}: wildcard {wildcard.name} covers no entry")
        wildcards.append(wildcard)
    regions = tuple(_region(file, r, entries) for r in raw.regions)
    return Catalog(
        id=raw.id,
        title=raw.title,
        aliases=tuple(raw.aliases),
        as_of=raw.as_of,
        sources=tuple(Source(s.id, s.title, s.url, s.as_of) for s in raw.sources),
        regions=regions,
        entries=entries,
        wildcards=tuple(wildcards),
        _region_keys=_region_keys(file, regions, entries),
    )


def parse_catalog(file: str, text: str) -> Catalog:
    """Build a catalog from YAML text; `file` names it in error messages."""
    try:
        raw = _FileModel.model_validate(yaml.safe_load(text))
    except (yaml.YAMLError, ValidationError) as exc:
        raise CatalogError(f"{file}: {exc}") from None
    return _build(file, raw)


@cache
def _all() -> tuple[dict[str, Catalog], dict[str, str]]:
    catalogs: dict[str, Catalog] = {}
    lookup: dict[str, str] = {}
    data = resources.files("portcullis.catalog") / "data"
    for item in sorted(data.iterdir(), key=lambda t: t.name):
        if not item.name.endswith(".yaml"):
            continue
        catalog = parse_catalog(item.name, item.read_text(encoding="utf-8"))
        if item.name != f"{catalog.id}.yaml":
            raise CatalogError(f"{item.name}: the file must be named {catalog.id}.yaml")
        catalogs[catalog.id] = catalog
        for key in (catalog.id, *catalog.aliases):
            if lookup.setdefault(key.casefold(), catalog.id) != catalog.id:
                raise CatalogError(f"{item.name}: {key!r} already names {lookup[key.casefold()]}")
    return catalogs, lookup


def catalog_ids() -> list[str]:
    return sorted(_all()[0])


def load_catalog(id_or_alias: str) -> Catalog:
    catalogs, lookup = _all()
    found = lookup.get(id_or_alias.strip().casefold())
    if found is None:
        known = ", ".join(
            f"{c.id} ({', '.join(c.aliases)})" if c.aliases else c.id for c in catalogs.values()
        )
        raise CatalogError(f"unknown registry catalog {id_or_alias!r}; known: {known}")
    return catalogs[found]

