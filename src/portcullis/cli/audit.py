"""`portcullis audit FILE`: the image digests each client pulled through inspection."""

from __future__ import annotations

import json

import click

from portcullis.cli.common import EXIT_USAGE, main


@main.command()
@click.argument("log_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def audit(log_file: str, as_json: bool) -> None:
    """Summarise a decision log's audit events: digests pulled per client, refusals."""
    from portcullis.tools.audit import AuditError, summarise, to_json, to_text

    try:
        with open(log_file, encoding="utf-8") as f:
            clients = summarise(f, log_file)
    except OSError as exc:
        click.echo(f"cannot read {log_file}: {exc.strerror}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    except (AuditError, UnicodeDecodeError) as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(EXIT_USAGE) from None
    click.echo(json.dumps(to_json(clients), indent=2) if as_json else to_text(clients))
