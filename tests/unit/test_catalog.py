"""The registry catalogs: the IBM doc held exactly, and `select` semantics."""

from __future__ import annotations

import pytest

from portcullis.basics.errors import CatalogError
from portcullis.basics.names import parse_pattern
from portcullis.catalog import CatalogEntry, catalog_ids, load_catalog, select, templates
from portcullis.catalog.loader import parse_catalog

# The table "Addresses for Container Registry traffic" of the IBM doc
# (lastupdated 2025-07-29), copied by hand: the expected truth.
DOC_TABLE = [
    ("Global", "icr.io", "registry.bluemix.net"),
    ("AP North", "jp.icr.io", None),
    ("AP South", "au.icr.io", "registry.au-syd.bluemix.net"),
    ("EU Central", "de.icr.io", "registry.eu-de.bluemix.net"),
    ("Madrid", "es.icr.io", None),
    ("Montreal", "ca2.icr.io", None),
    ("Osaka", "jp2.icr.io", None),
    ("Sao Paolo", "br.icr.io", None),
    ("Toronto", "ca.icr.io", None),
    ("UK South", "uk.icr.io", "registry.eu-gb.bluemix.net"),
    ("US South", "us.icr.io", "registry.ng.bluemix.net"),
]
DOC_DELIVERY = ["dd0.icr.io", "dd2.icr.io", "dd4.icr.io", "dd6.icr.io"]
DOC_CHINA = ["dd1-icr.ibm-zh.com", "dd3-icr.ibm-zh.com", "dd5-icr.ibm-zh.com", "dd7-icr.ibm-zh.com"]
# What the 2025-08-13 revision kept (the others are retired that day).
DELIVERY = DOC_DELIVERY[:2]
CHINA = DOC_CHINA[:2]
DOC_WILDCARDS = ["*.icr.io", "*.ibm-zh.com"]
REGION_IDS = [
    "global", "jp-tok", "au-syd", "eu-de", "eu-es", "ca-mon", "jp-osa", "br-sao", "ca-tor",
    "eu-gb", "us-south", "in-che", "in-mum",
]  # fmt: skip
# Later doc: per-region prefix of the delivery and private hosts.
PREFIXES = {
    "au": "au-syd", "br": "br-sao", "ca2": "ca-mon", "ca": "ca-tor", "de": "eu-de",
    "es": "eu-es", "uk": "eu-gb", "in": "in-che", "in2": "in-mum", "jp2": "jp-osa",
    "jp": "jp-tok", "us": "us-south",
}  # fmt: skip


@pytest.fixture(scope="module")
def ibm_entries() -> dict[str, CatalogEntry]:
    return {e.name: e for e in load_catalog("ibm").entries}


def names(entries: list[CatalogEntry]) -> list[str]:
    return [e.name for e in entries]


@pytest.mark.parametrize(("doc_name", "address", "deprecated"), DOC_TABLE)
def test_ibm_holds_every_table_row(doc_name: str, address: str, deprecated: str | None) -> None:
    region = load_catalog("ibm").resolve_region(doc_name)
    assert region.name == doc_name
    assert region.addresses == (address,)
    assert region.deprecated == ((deprecated,) if deprecated else ())
    assert region.added <= "2025-07-29"


def test_ibm_region_ids_in_doc_order_then_later_ones() -> None:
    regions = load_catalog("ibm").regions
    assert [r.id for r in regions] == REGION_IDS
    assert [r.name for r in regions[: len(DOC_TABLE)]] == [row[0] for row in DOC_TABLE]
    later = {r.id: r for r in regions if r.added > "2025-07-29"}
    assert set(later) == {"in-che", "in-mum"}
    assert later["in-che"].addresses == ("in.icr.io",)
    assert later["in-mum"].addresses == ("in2.icr.io",)


def test_ibm_deprecated_entries_are_tagged(ibm_entries: dict[str, CatalogEntry]) -> None:
    deprecated = [n for n, e in ibm_entries.items() if "deprecated" in e.tags]
    assert deprecated == [row[2] for row in DOC_TABLE if row[2]]


def test_ibm_lists_of_the_doc(ibm_entries: dict[str, CatalogEntry]) -> None:
    for name in DOC_DELIVERY:
        entry = ibm_entries[name]
        assert "delivery" in entry.tags and entry.regions == ()
        assert entry.source == "ibm-firewall" and entry.as_of <= "2025-07-29"
        assert entry.retired == (None if name in DELIVERY else "2025-08-13")
    for name in DOC_CHINA:
        assert {"china", "delivery"} <= set(ibm_entries[name].tags)
    delivery_without_region = [
        n for n, e in ibm_entries.items() if "delivery" in e.tags and not e.regions
    ]
    assert delivery_without_region == DOC_DELIVERY + DOC_CHINA
    wildcards = load_catalog("ibm").wildcards
    assert names(list(wildcards)) == DOC_WILDCARDS
    assert "china" in wildcards[1].tags and "china" not in wildcards[0].tags


def test_ibm_later_per_region_hosts(ibm_entries: dict[str, CatalogEntry]) -> None:
    for prefix, region in PREFIXES.items():
        delivery = ibm_entries[f"dd0.{prefix}.icr.io"]
        assert delivery.regions == (region,) and "delivery" in delivery.tags
        assert delivery.as_of >= "2026-01-14"
        private = ibm_entries[f"private.{prefix}.icr.io"]
        assert private.regions == (region,) and "private" in private.tags
    assert ibm_entries["private.icr.io"].regions == ("global",)


@pytest.mark.parametrize(
    ("text", "region_id"),
    [
        ("us-south", "us-south"),
        ("US South", "us-south"),
        ("us south", "us-south"),
        ("US_SOUTH", "us-south"),
        ("us.icr.io", "us-south"),
        ("US.ICR.IO.", "us-south"),
        ("registry.ng.bluemix.net", "us-south"),
        ("ap north", "jp-tok"),
        ("Sao Paulo", "br-sao"),
        ("icr.io", "global"),
        ("in2.icr.io", "in-mum"),
    ],
)
def test_region_aliases(text: str, region_id: str) -> None:
    assert load_catalog("ibm").resolve_region(text).id == region_id


def test_unknown_region_lists_valid_ids() -> None:
    with pytest.raises(CatalogError, match=r"valid ids: global, jp-tok.*in-mum"):
        load_catalog("ibm").resolve_region("us-east")


@pytest.mark.parametrize("alias", ["ibm", "icr", "IBM", "ibm-container-registry"])
def test_catalog_aliases(alias: str) -> None:
    assert load_catalog(alias).id == "ibm-container-registry"


def test_unknown_catalog_lists_known_ids() -> None:
    with pytest.raises(CatalogError) as info:
        load_catalog("harbor")
    for catalog_id in catalog_ids():
        assert catalog_id in str(info.value)


def test_catalog_ids_cover_the_registries() -> None:
    assert catalog_ids() == [
        "amazon-ecr", "azure-container-registry", "docker-hub", "github-container-registry",
        "google-artifact-registry", "ibm-container-registry", "microsoft-container-registry",
        "quay", "red-hat", "registry-k8s-io",
    ]  # fmt: skip


@pytest.mark.parametrize("catalog_id", catalog_ids())
def test_every_entry_is_a_valid_pattern(catalog_id: str) -> None:
    catalog = load_catalog(catalog_id)
    assert catalog.sources and catalog.as_of
    for entry in (*catalog.entries, *catalog.wildcards):
        text = templates.sample(entry.name) if entry.is_template else entry.name
        assert str(parse_pattern(text)) == text
        assert entry.source in {s.id for s in catalog.sources}


def test_unconfirmed_facts_are_tagged() -> None:
    tagged = {
        e.name for c in catalog_ids() for e in load_catalog(c).entries if "unconfirmed" in e.tags
    }
    assert tagged == {
        "pkg-containers.githubusercontent.com",
        "sso.redhat.com",
        "prod-<region>-starport-layer-bucket.s3.<region>.amazonaws.com",
        "storage.googleapis.com",
    }
    ghcr = select(load_catalog("ghcr"))
    assert "unconfirmed" in ghcr[1].tags and ghcr[1].name.startswith("pkg-containers")


def test_select_default_one_region() -> None:
    assert names(select(load_catalog("ibm"), regions=["us-south"])) == [
        "us.icr.io", "registry.ng.bluemix.net", *DELIVERY, "dd0.us.icr.io",
    ]  # fmt: skip
    assert names(select(load_catalog("ibm"), regions=["us-south"], as_of="2025-07-29")) == [
        "us.icr.io", "registry.ng.bluemix.net", *DOC_DELIVERY,
    ]  # fmt: skip


def test_select_opt_outs_and_opt_ins() -> None:
    ibm = load_catalog("ibm")
    assert names(select(ibm, regions=["US South"], include=())) == ["us.icr.io"]
    with_china = names(select(ibm, regions=["us-south"], include=("delivery", "china")))
    assert with_china == ["us.icr.io", *DELIVERY, *CHINA, "dd0.us.icr.io"]
    # China hosts are delivery hosts too: leaving delivery out leaves them out.
    assert names(select(ibm, regions=["us-south"], include=("china",))) == ["us.icr.io"]
    private = names(select(ibm, regions=["global", "us-south"], include=("private",)))
    assert private == ["icr.io", "us.icr.io", "private.icr.io", "private.us.icr.io"]


def test_select_all_regions_holds_every_public_name() -> None:
    every = names(select(load_catalog("ibm")))
    expected = {a for _, a, _ in DOC_TABLE} | {d for *_, d in DOC_TABLE if d}
    expected |= {"in.icr.io", "in2.icr.io", *DELIVERY}
    expected |= {f"dd0.{p}.icr.io" for p in PREFIXES}
    assert set(every) == expected and len(every) == len(expected)


def test_select_wildcards() -> None:
    ibm = load_catalog("ibm")
    assert names(select(ibm, regions=["us-south"], wildcards=True)) == [
        "*.icr.io",
        "registry.ng.bluemix.net",
    ]
    # `*.icr.io` never matches the apex, so the global registry stays listed.
    assert names(select(ibm, regions=["global"], include=(), wildcards=True)) == ["icr.io"]
    china = select(ibm, regions=["us-south"], include=("delivery", "china"), wildcards=True)
    assert names(china) == ["*.icr.io", "*.ibm-zh.com"]
    assert "china" in china[1].tags


def test_select_is_deterministic_and_unique() -> None:
    ibm = load_catalog("ibm")
    first = select(ibm, regions=["us-south", "US South", "us.icr.io"], include=("private",))
    assert first == select(ibm, regions=["us-south"], include=("private",))
    assert len(names(first)) == len(set(names(first)))


def test_select_fills_templates() -> None:
    ecr = load_catalog("ecr")
    got = names(select(ecr, params={"account": "123456789012", "region": "us-east-1,EU-west-1"}))
    assert got == [
        "123456789012.dkr.ecr.us-east-1.amazonaws.com",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        "api.ecr.us-east-1.amazonaws.com",
        "api.ecr.eu-west-1.amazonaws.com",
        "prod-us-east-1-starport-layer-bucket.s3.us-east-1.amazonaws.com",
        "prod-eu-west-1-starport-layer-bucket.s3.eu-west-1.amazonaws.com",
    ]
    for name in got:
        parse_pattern(name)


def test_missing_param_names_the_flag() -> None:
    with pytest.raises(CatalogError, match=r"--param account=<value> --param region=<value>"):
        select(load_catalog("ecr"))
    with pytest.raises(CatalogError, match=r"--param location=<value>"):
        select(load_catalog("gar"))


def test_missing_param_falls_back_to_vendor_wildcard() -> None:
    acr = load_catalog("acr")
    assert names(select(acr)) == ["*.azurecr.io", "*.blob.core.windows.net"]
    assert names(select(acr, params={"registry": "myreg"})) == [
        "myreg.azurecr.io", "*.azurecr.io", "*.blob.core.windows.net",
    ]  # fmt: skip
    full = select(acr, params={"registry": "myreg", "region": "eastus"})
    assert names(full) == [
        "myreg.azurecr.io", "myreg.eastus.geo.azurecr.io", "myreg.eastus.data.azurecr.io",
        "*.blob.core.windows.net",
    ]  # fmt: skip
    assert full[0].tags == ("api", "token") and full[0].source == "acr-firewall"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"account": "evil.com", "region": "x"}, "no dots"),
        ({"account": "*", "region": "x"}, "not a valid value"),
        ({"account": "1", "region": ""}, "not a valid value"),
        ({"acount": "1"}, "no placeholder <acount>; its placeholders are account, region"),
        ({"account": "a" * 64, "region": "x"}, "filled in gives"),
    ],
)
def test_bad_params(params: dict[str, str], message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        select(load_catalog("ecr"), params=params)


def test_select_errors() -> None:
    with pytest.raises(CatalogError,
                       match="included are deprecated, delivery, china, private, retired"):
        select(load_catalog("ibm"), include=("deprecated", "cdn"))
    with pytest.raises(CatalogError, match="no region given"):
        select(load_catalog("ibm"), regions=[])
    with pytest.raises(CatalogError, match="docker-hub has no regions"):
        select(load_catalog("docker"), regions=["us-south"])
    with pytest.raises(CatalogError, match="has no placeholders"):
        select(load_catalog("docker"), params={"region": "x"})


def test_unconfirmed_in_include_changes_nothing() -> None:
    ghcr = load_catalog("ghcr")
    assert select(ghcr, include=("deprecated", "delivery", "unconfirmed")) == select(ghcr)


@pytest.mark.parametrize(
    ("wildcard", "name", "covered"),
    [
        ("*.icr.io", "us.icr.io", True),
        ("*.icr.io", "icr.io", False),
        ("*.icr.io", "dd0.us.icr.io", True),
        ("*.icr.io", "xicr.io", False),
        ("*.azurecr.io", "<registry>.azurecr.io", True),
        ("*.azurecr.io", "<registry>.<region>.data.azurecr.io", True),
        ("*.azurecr.io", "<registry>azurecr.io", False),
        ("*.core.windows.net", "*.blob.core.windows.net", True),
        ("*.blob.core.windows.net", "*.blob.core.windows.net", True),
        ("*.blob.core.windows.net", "*.core.windows.net", False),
    ],
)
def test_covers(wildcard: str, name: str, covered: bool) -> None:
    assert templates.covers(parse_pattern(wildcard), name) is covered


GOOD = """
id: t
title: T
as_of: 2025-07-29
sources: [{id: s, title: S, as_of: 2025-07}]
regions: [{id: r1, name: One}]
entries:
  - {name: a.example.com, tags: [region:r1, api], source: s, as_of: 2025-07-29}
"""


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("tags: [region:r1, api]", "tags: [region:r2, api]", "names no region"),
        ("tags: [region:r1, api]", "tags: [cdn]", "unknown tag 'cdn'"),
        ("source: s, as_of: 2025-07-29}", "source: x, as_of: 2025-07-29}", "unknown source"),
        ("name: a.example.com", "name: A.example.com", "canonical form"),
        ("name: a.example.com", "name: .example.com", "not a valid name"),
        ("name: a.example.com", "name: '<Bad>.example.com'", "not a valid name"),
        ("title: T", "title: T\nextra: 1", "extra"),
        ("as_of: 2025-07-29\nsources", "as_of: July\nsources", "as_of"),
    ],
)
def test_bad_data_is_refused(old: str, new: str, message: str) -> None:
    assert parse_catalog("t.yaml", GOOD).entries[0].as_of == "2025-07-29"
    assert old in GOOD
    with pytest.raises(CatalogError, match=message):
        parse_catalog("t.yaml", GOOD.replace(old, new))


def test_duplicates_and_idle_wildcards_are_refused() -> None:
    entry = "  - {name: a.example.com, tags: [api], source: s, as_of: 2025-07-29}\n"
    with pytest.raises(CatalogError, match=r"listed more than once: a\.example\.com"):
        parse_catalog("t.yaml", GOOD + entry)
    idle = "wildcards: [{name: '*.other.com', source: s, as_of: 2025-07-29}]\n"
    with pytest.raises(CatalogError, match=r"\*\.other\.com covers no entry"):
        parse_catalog("t.yaml", GOOD + idle)
    exact = "wildcards: [{name: a.example.com, source: s, as_of: 2025-07-29}]\n"
    with pytest.raises(CatalogError, match="must be"):
        parse_catalog("t.yaml", GOOD + exact)
