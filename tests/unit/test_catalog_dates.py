"""The catalogs on a given day: `--as-of` gives IBM's documents back, retired
names are left out unless asked for, and every entry carries a real day.

The IBM documents are copies kept in tests/data: the one the product was
built on (lastupdated 2025-07-29) and today's registry_firewall.md (2026-05-27),
read here as their tables and bullet lists of names.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from portcullis.basics.errors import CatalogError, ConfigError
from portcullis.catalog import catalog_ids, choose, load_catalog, regions_on, select
from portcullis.cli import EXIT_OK, EXIT_USAGE, main
from portcullis.config import parse_policy
from portcullis.policy.engine import Engine

DATA = Path(__file__).resolve().parents[1] / "data"
NAME = re.compile(r"`([^`]+)`")


class Doc:
    """One revision of "Accessing Container Registry through a firewall"."""

    def __init__(self, path: Path) -> None:
        self.text = path.read_text()
        # The address table: | Region | `registry` | `deprecated` or Not applicable |
        self.table: dict[str, tuple[str, str | None]] = {}
        for line in self.text.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 3 and cells[1].startswith("`") and cells[1].endswith("icr.io`"):
                deprecated = NAME.fullmatch(cells[2])
                self.table[cells[0]] = (cells[1].strip("`"),
                                        deprecated.group(1) if deprecated else None)
        # Per-region delivery table: | `us-south` | `dd0.us.icr.io` |
        self.regional = {m.group(1): m.group(2) for m in re.finditer(
            r"^\| `([a-z]+-[a-z]+)` \| `([^`]+)` \|$", self.text, re.M)}
        # Bullet lists: the public-network names, then the China names.
        lists = re.findall(r"((?:^- `[^`]+`\n)+)", self.text, re.M)
        self.public, self.china = ([NAME.search(item).group(1)  # type: ignore[union-attr]
                                    for item in block.splitlines()] for block in lists)
        self.wildcards = re.findall(r"`(\*\.[^`]+)`", self.text.split("wildcard characters")[1])

    def names(self) -> set[str]:
        out = {a for a, _ in self.table.values()} | {d for _, d in self.table.values() if d}
        return out | set(self.regional.values()) | set(self.public)


SEED = Doc(DATA / "ibm-registry-firewall-2025-07-29.md")
TODAY_DOC = Doc(DATA / "ibm-registry-firewall-2026-05-27.md")


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_the_copies_read_as_the_documents_say() -> None:
    assert len(SEED.table) == 11 and SEED.table["US South"] == ("us.icr.io",
                                                                "registry.ng.bluemix.net")
    assert SEED.public == ["dd0.icr.io", "dd2.icr.io", "dd4.icr.io", "dd6.icr.io"]
    assert len(SEED.china) == 4 and SEED.regional == {}
    assert SEED.wildcards == ["*.icr.io", "*.ibm-zh.com"]
    assert len(TODAY_DOC.table) == 13 and TODAY_DOC.public == ["dd0.icr.io", "dd2.icr.io"]
    assert len(TODAY_DOC.regional) == 12 and TODAY_DOC.china == ["dd1-icr.ibm-zh.com",
                                                                "dd3-icr.ibm-zh.com"]


def test_regions_as_of_the_seed_day_are_its_table() -> None:
    result = run("regions", "--as-of", "2025-07-29")
    assert result.exit_code == EXIT_OK
    rows = {}
    for line in result.stdout.splitlines()[1:]:
        region = load_catalog("ibm").resolve_region(line.split()[0])
        rows[region.name] = (region.addresses[0], region.deprecated[0] if region.deprecated
                             else None)
        address, deprecated = rows[region.name]
        assert line.split()[-3:-1] == [address, deprecated or "-"]  # the printed row
    assert rows == SEED.table
    assert "not listed yet on 2025-07-29: in-che (2026-02-09), in-mum (2026-05-18)" in \
        result.stderr
    assert "retired" not in result.stderr  # nothing was retired yet that day


def test_domains_as_of_the_seed_day_are_its_lists() -> None:
    ibm = load_catalog("ibm")
    public = select(ibm, as_of="2025-07-29")
    assert {e.name for e in public} == SEED.names()
    assert [e.name for e in public if "delivery" in e.tags] == SEED.public
    china = select(ibm, include=("delivery", "china"), as_of="2025-07-29")
    assert [e.name for e in china if "china" in e.tags] == SEED.china
    wild = select(ibm, include=("deprecated", "delivery", "china"), wildcards=True,
                  as_of="2025-07-29")
    assert [e.name for e in wild if e.name.startswith("*.")] == SEED.wildcards
    out = run("domains", "--all-regions", "--china", "--as-of", "2025-07-29")
    assert set(out.stdout.split()) == SEED.names() | set(SEED.china)
    assert out.stderr == ""


def test_domains_today_are_the_current_document() -> None:
    ibm = load_catalog("ibm")
    assert {e.name for e in select(ibm)} == TODAY_DOC.names()
    china = select(ibm, include=("delivery", "china"))
    assert [e.name for e in china if "china" in e.tags] == TODAY_DOC.china
    for region_id, host in TODAY_DOC.regional.items():
        names = [e.name for e in select(ibm, regions=[region_id])]
        assert host in names and f"dd0.{names[0]}" == host
    listed, later = regions_on(ibm, "2026-12-01")
    by_address = {r.addresses[0]: (r.deprecated or (None,))[0] for r in listed}
    assert by_address == dict(TODAY_DOC.table.values()) and later == []


@pytest.mark.parametrize(
    ("day", "region", "expected"),
    [
        # The day before the removals, and the removals' day.
        ("2025-08-12", "us-south", ["us.icr.io", "registry.ng.bluemix.net", "dd0.icr.io",
                                    "dd2.icr.io", "dd4.icr.io", "dd6.icr.io"]),
        ("2025-08-13", "us-south", ["us.icr.io", "registry.ng.bluemix.net", "dd0.icr.io",
                                    "dd2.icr.io"]),
        # Per-region delivery hosts from 2026-01-14.
        ("2026-01-14", "us-south", ["us.icr.io", "registry.ng.bluemix.net", "dd0.icr.io",
                                    "dd2.icr.io", "dd0.us.icr.io"]),
        ("2026-02-09", "in-che", ["in.icr.io", "dd0.icr.io", "dd2.icr.io", "dd0.in.icr.io"]),
        ("2026-05-18", "in-mum", ["in2.icr.io", "dd0.icr.io", "dd2.icr.io", "dd0.in2.icr.io"]),
    ],
)  # fmt: skip
def test_what_a_firewall_needed_on_a_day(day: str, region: str, expected: list[str]) -> None:
    assert [e.name for e in select(load_catalog("ibm"), regions=[region], as_of=day)] == expected


def test_retired_names_are_tagged_left_out_and_said_so() -> None:
    chosen = choose(load_catalog("ibm"), regions=["us-south"], as_of="2026-12-01")
    assert [e.name for e in chosen.left_out] == ["dd4.icr.io", "dd6.icr.io"]
    assert all("retired" in e.tags and e.retired == "2025-08-13" for e in chosen.left_out)
    back = choose(load_catalog("ibm"), regions=["us-south"], include=("deprecated", "delivery",
                                                                      "retired"))
    assert back.left_out == [] and [e.name for e in back.entries if "retired" in e.tags] == [
        "dd4.icr.io", "dd6.icr.io"]
    # Before the day they were retired they are plain delivery hosts.
    early = select(load_catalog("ibm"), regions=["us-south"], as_of="2025-08-01")
    assert all("retired" not in e.tags for e in early)
    out = run("domains", "--region", "us-south", "--format", "json")
    assert "dd4.icr.io" not in out.stdout
    assert "left out 2 retired names" in out.stderr and "--include retired" in out.stderr
    assert "4 retired names" in run("regions").stderr
    assert "`portcullis domains --include retired` lists them" in run("regions").stderr
    shown = run("domains", "--region", "us-south", "--include", "retired", "--format", "json")
    assert '"retired": "2025-08-13"' in shown.stdout and shown.stderr == ""


def test_a_region_not_yet_listed_and_bad_days_are_refused() -> None:
    with pytest.raises(CatalogError, match=r"in-mum \(Mumbai\) was first listed on 2026-05-18"):
        select(load_catalog("ibm"), regions=["in2.icr.io"], as_of="2026-01-01")
    for args in (["domains", "--all-regions", "--as-of", "29/07/2025"],
                 ["regions", "--as-of", "2025-13-01"]):
        result = run(*args)
        assert result.exit_code == EXIT_USAGE
        assert "is not a date; write YYYY-MM-DD" in result.stderr


def test_policies_may_include_retired_and_the_default_leaves_them_out() -> None:
    text = """
version: 1
sources: {w: [10.0.0.0/8]}
rules:
  - name: ibm
    from: [w]
    to: [{catalog: ibm, regions: [us-south], include: [delivery, retired]}]
    ports: [443]
    action: allow
"""
    engine = Engine(parse_policy(text, "p.yaml"))
    assert {"dd4.icr.io", "dd6.icr.io"} <= set(engine.rules[0].destinations)
    default = Engine(parse_policy(text.replace(", retired]", "]"), "p.yaml"))
    assert "dd4.icr.io" not in default.rules[0].destinations
    with pytest.raises(ConfigError, match="retired"):
        parse_policy(text.replace("retired]", "gone]"), "p.yaml")


@pytest.mark.parametrize("catalog_id", catalog_ids())
def test_every_entry_has_a_day_and_retirements_follow_listings(catalog_id: str) -> None:
    catalog = load_catalog(catalog_id)
    sources = {s.id for s in catalog.sources}
    for entry in (*catalog.entries, *catalog.wildcards):
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", entry.as_of), entry
        assert entry.as_of <= catalog.as_of
        if entry.retired is not None:
            assert entry.as_of < entry.retired and entry.retired_by in sources
