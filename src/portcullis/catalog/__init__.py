"""Registry catalogs (DESIGN §3): the names each registry needs, by region and tag."""

from portcullis.basics.errors import CatalogError
from portcullis.catalog.loader import (
    DEFAULT_INCLUDE,
    OPT_IN_TAGS,
    Catalog,
    CatalogEntry,
    Region,
    Source,
    catalog_ids,
    load_catalog,
    select,
)

__all__ = [
    "DEFAULT_INCLUDE",
    "OPT_IN_TAGS",
    "Catalog",
    "CatalogEntry",
    "CatalogError",
    "Region",
    "Source",
    "catalog_ids",
    "load_catalog",
    "select",
]
