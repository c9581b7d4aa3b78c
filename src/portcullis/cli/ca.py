"""`portcullis ca init|show`: the CA that registry inspection presents to workers."""

from __future__ import annotations

from pathlib import Path

import click

from portcullis.basics.errors import ConfigError, InvalidPattern
from portcullis.basics.names import parse_pattern
from portcullis.cli.common import EXIT_USAGE, load_or_exit, main


@main.group()
def ca() -> None:
    """Create the inspection CA and show how to trust it."""


def _fail(message: str) -> SystemExit:
    click.echo(message, err=True)
    return SystemExit(EXIT_USAGE)


@ca.command("init")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Directory for ca.pem and ca-key.pem (the key is created 0600).")
@click.option("-c", "--config", "path", type=click.Path(dir_okay=False),
              help="Constrain the CA to the names this policy inspects.")
@click.option("--name", "names", multiple=True,
              help="A name to permit (repeatable), besides the policy's.")
@click.option("--days", default=90, show_default=True, help="Validity, at most 365.")
def init(out: str, path: str | None, names: tuple[str, ...], days: int) -> None:
    """Create an ECDSA P-256 CA limited by name constraints to the inspected names."""
    from portcullis.tools.ca import build_ca, inspected_names, write_ca

    permitted = inspected_names(load_or_exit(path)) if path else []
    for name in names:
        try:
            suffix = parse_pattern(name).suffix
        except InvalidPattern as exc:
            raise _fail(f"--name {name!r}: {exc}") from None
        if suffix not in permitted:
            permitted.append(suffix)
    try:
        cert, key = build_ca(permitted, days)
        cert_path, key_path = write_ca(Path(out), cert, key)
    except (ConfigError, OSError) as exc:
        raise _fail(str(exc)) from None
    click.echo(f"wrote {cert_path} and {key_path} (mode 0600)")
    click.echo(f"permitted names: {', '.join(permitted)} (and every name below them)")
    click.echo(f"valid until {cert.not_valid_after_utc:%Y-%m-%d}; next: `portcullis ca show"
               f" --cert {cert_path}`")


@ca.command("show")
@click.option("--cert", "cert", type=click.Path(dir_okay=False),
              help="The CA certificate (default: tls_inspection.ca_cert of -c).")
@click.option("-c", "--config", "path", type=click.Path(dir_okay=False),
              help="The policy whose tls_inspection.ca_cert to show.")
def show(cert: str | None, path: str | None) -> None:
    """Print the CA's fingerprint, what it may vouch for, and how to trust it."""
    from portcullis.tools.ca import ca_facts, trust_instructions

    if cert is None:
        if path is None:
            raise _fail("give --cert FILE or -c POLICY")
        tls = load_or_exit(path).tls_inspection
        if tls is None:
            raise _fail(f"{path} has no tls_inspection: section")
        cert = tls.ca_cert
    try:
        facts = ca_facts(Path(cert))
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    click.echo(f"certificate  {facts.path}")
    click.echo(f"subject      {facts.subject}")
    click.echo(f"sha256       {facts.fingerprint}")
    click.echo(f"valid until  {facts.not_after:%Y-%m-%d %H:%M} UTC")
    click.echo(f"permits      {', '.join(facts.permitted) or 'ANY NAME (no name constraints)'}")
    click.echo("trust it in:")
    for line in trust_instructions(facts):
        click.echo(f"  {line}")
