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
from portcullis.catalog.selection import check_reference, select, select_reference

__all__ = [
    "DEFAULT_INCLUDE",
    "OPT_IN_TAGS",
    "Catalog",
    "CatalogEntry",
    "CatalogError",
    "Region",
    "Source",
    "catalog_ids",
    "check_reference",
    "load_catalog",
    "select",
    "select_reference",
]
