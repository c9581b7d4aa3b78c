"""Export commands: `export` a policy to another firewall's configuration, and
`nftables`, the rules that send traffic to the transparent listener."""

from __future__ import annotations

import click

from portcullis.basics.errors import NftablesError
from portcullis.cli.common import EXIT_DENIED, EXIT_USAGE, load_or_exit, main
from portcullis.tools import export as exporting


def _uid(value: str | None) -> int | None:
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    import pwd

    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise click.UsageError(f"--uid {value!r}: no such user") from None


@main.command()
@click.option("-c", "--config", "path", type=click.Path(dir_okay=False),
              help="Policy file (default: the embedded default policy).")
@click.option("--apply", "apply_rules", is_flag=True,
              help="Load the ruleset with `nft -f` instead of printing it (needs root).")
@click.option("--uid", "uid", metavar="USER|UID",
              help="Also exempt this user's traffic (the account Portcullis runs as).")
def nftables(path: str | None, apply_rules: bool, uid: str | None) -> None:
    """Print (or load) the nftables rules that redirect workers to the transparent listener."""
    from portcullis.tools import nftables as nft

    policy = load_or_exit(path)
    try:
        text = nft.ruleset(policy, exempt_uid=_uid(uid), source=path or "the default policy")
    except NftablesError as exc:
        click.echo(f"portcullis nftables: {exc}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    if not apply_rules:
        click.echo(text, nl=False)
        return
    try:
        nft.load(text)
    except NftablesError as exc:
        click.echo(f"portcullis nftables: {exc}", err=True)
        raise SystemExit(EXIT_DENIED) from None
    click.echo(f"loaded table inet {nft.TABLE}")


@main.command()
@click.option("-c", "--config", "path", required=True, type=click.Path(dir_okay=False),
              help="Policy file to export.")
@click.option("--format", "fmt", required=True, type=click.Choice(list(exporting.FORMATS)),
              help="Target firewall.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write here instead of stdout.")
@click.option("--option", "option_list", multiple=True, metavar="KEY=VALUE",
              help="A format's setting, e.g. cilium-version=1.18 (repeatable).")
def export(path: str, fmt: str, output: str | None, option_list: tuple[str, ...]) -> None:
    """Translate a policy into another firewall's configuration, with the same meaning.

    Exit 2, saying why, when the format cannot express the policy exactly.
    """
    policy = load_or_exit(path)
    options: dict[str, str] = {}
    for item in option_list:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.UsageError(f"--option {item!r}: write --option key=value")
        options[key.strip()] = value.strip()
    try:
        spec = exporting.spec_from_file(path, policy)
        text = exporting.render(fmt, spec, options)
    except exporting.ExportRefused as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(EXIT_USAGE) from None
    for warning in exporting.warnings(fmt, spec):
        click.echo(f"portcullis export: {warning}", err=True)
    if output is None:
        click.echo(text, nl=False)
        return
    with open(output, "w", encoding="utf-8") as file:
        file.write(text)
