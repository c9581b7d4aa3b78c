"""Catalog commands: `regions` and `domains`, what a registry needs."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import click

from portcullis import catalog
from portcullis.catalog import render
from portcullis.cli.common import EXIT_USAGE, main
from portcullis.tools import export as exporting


def _catalog_or_usage(registry: str) -> catalog.Catalog:
    try:
        return catalog.load_catalog(registry)
    except catalog.CatalogError as exc:
        raise click.UsageError(str(exc)) from None


# Renderers for `domains --format`. Firewall export formats (squid, nginx...)
# are added to this mapping before `domains` is defined: click copies the keys.
DOMAIN_FORMATS: dict[str, Callable[[Sequence[catalog.CatalogEntry]], str]] = {
    "text": render.entries_text,
    "json": render.entries_json,
    "csv": render.entries_csv,
}


class _ExportRefusedError(click.ClickException):
    """An export format cannot express the selection; exit 2 like a usage error."""

    exit_code = EXIT_USAGE


def _export_renderer(fmt: str) -> Callable[[Sequence[catalog.CatalogEntry]], str]:
    def render(entries: Sequence[catalog.CatalogEntry]) -> str:
        params = click.get_current_context().params
        chosen = " ".join(
            f"{k}={','.join(v) if isinstance(v, tuple) else v}"
            for k, v in sorted(params.items())
            if v and k != "fmt"
        )
        spec = exporting.spec_from_names(
            [entry.name for entry in entries], origin=f"portcullis domains ({chosen})"
        )
        try:
            return exporting.render(fmt, spec)
        except exporting.ExportRefused as exc:
            raise _ExportRefusedError(str(exc)) from None

    return render


DOMAIN_FORMATS.update({fmt: _export_renderer(fmt) for fmt in exporting.FORMATS})


def _day_or_usage(as_of: str | None) -> str:
    try:
        return catalog.check_day(as_of) if as_of is not None else catalog.today()
    except catalog.CatalogError as exc:
        raise click.UsageError(f"--as-of: {exc}") from None


_AS_OF_HELP = "Answer as the vendor's lists stood on this day (YYYY-MM-DD; default today)."


@main.command()
@click.option("--registry", default="ibm", show_default=True, help="Catalog id or alias.")
@click.option("--as-of", "as_of", metavar="DATE", help=_AS_OF_HELP)
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
def regions(registry: str, as_of: str | None, fmt: str) -> None:
    """List a registry's regions: id, name in the doc, registry, deprecated address
    and the day it was first listed."""
    cat = _catalog_or_usage(registry)
    day = _day_or_usage(as_of)
    listed, later = catalog.regions_on(cat, day)
    retired = [e for e in cat.entries if e.retired_on(day)]
    if fmt == "json":
        rows = [
            {
                "id": r.id,
                "name": r.name,
                "aliases": list(r.aliases),
                "registry": list(r.addresses),
                "deprecated": list(r.deprecated),
                "added": r.added,
            }
            for r in listed
        ]
        click.echo(json.dumps(rows, indent=2))
    elif not cat.regions:
        click.echo(f"{cat.id} has no regions", err=True)
    else:
        click.echo(render.regions_text(listed), nl=False)
    click.echo(render.left_out_text(day, retired, later, "`portcullis domains --include retired`"),
               nl=False, err=True)


def _parse_params(raw: Sequence[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise click.UsageError(f"--param {item!r}: write --param key=value")
        key = key.strip()
        # A repeated key adds values, as a comma-separated list does.
        params[key] = f"{params[key]},{value}" if key in params else value
    return params


@main.command()
@click.option("--registry", default="ibm", show_default=True, help="Catalog id or alias.")
@click.option(
    "--region", "region_list", multiple=True, help="Region id, doc name or host (repeatable)."
)
@click.option("--all-regions", is_flag=True, help="Every region of the registry.")
@click.option("--no-deprecated", is_flag=True, help="Leave out deprecated names.")
@click.option("--no-delivery", is_flag=True, help="Leave out delivery (blob redirect) hosts.")
@click.option("--china", is_flag=True, help="Add the hosts for users located in China.")
@click.option("--private", is_flag=True, help="Add private-network endpoints.")
@click.option(
    "--include",
    "include_list",
    multiple=True,
    type=click.Choice(catalog.OPT_IN_TAGS),
    help="Add the names with this tag (repeatable): retired brings back removed names.",
)
@click.option("--as-of", "as_of", metavar="DATE", help=_AS_OF_HELP)
@click.option("--wildcards", is_flag=True, help="Use the vendor's recommended wildcards.")
@click.option(
    "--param",
    "param_list",
    multiple=True,
    metavar="KEY=VALUE",
    help="Value for a placeholder such as <account> (repeatable).",
)
@click.option(
    "--format", "fmt", type=click.Choice(list(DOMAIN_FORMATS)), default="text", show_default=True
)
def domains(
    registry: str,
    region_list: tuple[str, ...],
    all_regions: bool,
    no_deprecated: bool,
    no_delivery: bool,
    china: bool,
    private: bool,
    include_list: tuple[str, ...],
    as_of: str | None,
    wildcards: bool,
    param_list: tuple[str, ...],
    fmt: str,
) -> None:
    """Print the names a registry needs, one per line (or JSON, CSV)."""
    cat = _catalog_or_usage(registry)
    if region_list and all_regions:
        raise click.UsageError("give either --region or --all-regions, not both")
    # Only the region list of the doc is an informed choice; guessing "all"
    # would open more than a user who forgot --region meant to.
    if cat.regions and not region_list and not all_regions:
        raise click.UsageError(
            f"choose regions: --region ID (repeatable) or --all-regions; "
            f"'portcullis regions --registry {registry}' lists them"
        )
    include = [
        tag
        for tag, wanted in (
            ("deprecated", not no_deprecated),
            ("delivery", not no_delivery),
            ("china", china),
            ("private", private),
        )
        if wanted
    ]
    include += [tag for tag in include_list if tag not in include]
    day = _day_or_usage(as_of)
    try:
        chosen = catalog.choose(
            cat,
            regions=list(region_list) or None,
            include=include,
            params=_parse_params(param_list),
            wildcards=wildcards,
            as_of=day,
        )
    except catalog.CatalogError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(DOMAIN_FORMATS[fmt](chosen.entries), nl=False)
    click.echo(render.left_out_text(day, chosen.left_out, []), nl=False, err=True)
