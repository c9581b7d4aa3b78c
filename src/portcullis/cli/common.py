"""What the commands share: the `portcullis` group they hang on, the exit codes,
and loading the policy a command is given."""

from __future__ import annotations

import click

from portcullis.basics.errors import PolicyError
from portcullis.config import Policy, load_policy

EXIT_OK = 0
EXIT_DENIED = 1
EXIT_USAGE = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="portcullis")
def main() -> None:
    """Portcullis: a Layer 7 egress firewall for container-registry traffic."""


def load_or_exit(path: str | None) -> Policy:
    try:
        return load_policy(path)
    except PolicyError as exc:
        click.echo(f"invalid policy {exc.source}:", err=True)
        for problem in exc.problems:
            click.echo(f"  line {problem}" if problem[:1].isdigit() else f"  {problem}", err=True)
        raise SystemExit(EXIT_USAGE) from None
