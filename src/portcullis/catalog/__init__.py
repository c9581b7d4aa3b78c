"""Registry catalogs (docs/semantics.md §6): the names each registry needs, by region and tag."""

from portcullis.basics.errors import CatalogError
from portcullis.catalog.loader import catalog_ids, load_catalog
from portcullis.catalog.model import (
    DEFAULT_INCLUDE,
    OPT_IN_TAGS,
    Catalog,
    CatalogEntry,
    Region,
    Source,
)
from portcullis.catalog.selection import (
    Selection,
    check_day,
    check_reference,
    choose,
    regions_on,
    select,
    select_reference,
    today,
)

__all__ = [
    "DEFAULT_INCLUDE",
    "OPT_IN_TAGS",
    "Catalog",
    "CatalogEntry",
    "CatalogError",
    "Region",
    "Selection",
    "Source",
    "catalog_ids",
    "check_day",
    "check_reference",
    "choose",
    "load_catalog",
    "regions_on",
    "select",
    "select_reference",
    "today",
]
