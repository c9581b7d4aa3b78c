"""Catalog selections and region tables as text, JSON and CSV (`domains`, `regions`)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

from portcullis.catalog.model import CatalogEntry, Region


def entries_text(entries: Sequence[CatalogEntry]) -> str:
    return "".join(f"{entry.name}\n" for entry in entries)


def entries_json(entries: Sequence[CatalogEntry]) -> str:
    return json.dumps([entry.to_dict() for entry in entries], indent=2) + "\n"


def entries_csv(entries: Sequence[CatalogEntry]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["name", "tags", "source", "as_of", "retired"])
    for entry in entries:
        writer.writerow([entry.name, " ".join(entry.tags), entry.source, entry.as_of,
                         entry.retired or ""])
    return out.getvalue()


def regions_text(regions: Sequence[Region]) -> str:
    """The IBM document's table shape: region, name, registry, deprecated
    address, and the day the region's registry was first listed."""
    rows = [("REGION", "NAME", "REGISTRY", "DEPRECATED", "LISTED")]
    for r in regions:
        rows.append(
            (r.id, r.name, ", ".join(r.addresses) or "-", ", ".join(r.deprecated) or "-", r.added)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[4]]).rstrip()
        for row in rows
    ]
    return "\n".join(lines) + "\n"


def left_out_text(day: str, retired: Sequence[CatalogEntry], later: Sequence[Region],
                  hint: str = "--include retired") -> str:
    """What a selection on `day` left out, for stderr: retired names and
    regions not listed yet. Empty when nothing was."""
    lines = []
    if retired:
        names = ", ".join(f"{e.name} (retired {e.retired})" for e in retired)
        lines.append(f"left out {len(retired)} retired name{'s' * (len(retired) != 1)} "
                     f"as of {day}: {names}; {hint} lists them")
    if later:
        names = ", ".join(f"{r.id} ({r.added})" for r in later)
        lines.append(f"not listed yet on {day}: {names}")
    return "".join(f"{line}\n" for line in lines)
