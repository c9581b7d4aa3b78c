"""`passwd`: add, change or delete a user of the password file (`auth.passwords`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from portcullis.basics.errors import PasswordFileError
from portcullis.cli.common import EXIT_USAGE, main
from portcullis.policy.passwords import SCHEMES
from portcullis.tools.passwd import delete_user, set_password


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("user")
@click.option("--scheme", type=click.Choice(SCHEMES), default="argon2", show_default=True,
              help="The hash: argon2id, or bcrypt.")
@click.option("--cost", type=click.IntRange(4, 16), default=12, show_default=True,
              help="bcrypt's work factor (each step doubles the time).")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of standard input.")
@click.option("--delete", is_flag=True, help="Remove USER from FILE.")
def passwd(file: Path, user: str, scheme: str, cost: int, password_stdin: bool,
           delete: bool) -> None:
    """Set USER's password in FILE (created, mode 0600), or --delete USER."""
    try:
        if delete:
            delete_user(file, user)
            click.echo(f"deleted {user} from {file}")
            return
        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = click.prompt("password", hide_input=True, confirmation_prompt=True)
        added = set_password(file, user, password, scheme=scheme, cost=cost)
    except PasswordFileError as exc:
        click.echo(f"portcullis passwd: {exc}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    done = f"added {user} to" if added else f"changed {user} in"
    click.echo(f"{done} {file} ({scheme})")
