"""Policy commands: `validate` a file, `explain` a decision."""

from __future__ import annotations

import asyncio
import json

import click

from portcullis.basics.errors import BadParameter, PasswordFileError
from portcullis.cli.common import EXIT_DENIED, EXIT_OK, EXIT_USAGE, load_or_exit, main
from portcullis.policy import passwords
from portcullis.policy.engine import Engine


@main.command()
@click.option("-c", "--config", "path", required=True, type=click.Path(dir_okay=False),
              help="Policy file to check.")
def validate(path: str) -> None:
    """Check a policy file; exit 0 when valid, 2 with every error listed."""
    policy = load_or_exit(path)
    engine = Engine(policy)
    names = sum(len(rule.destinations) for rule in engine.rules)
    users = ""
    if policy.auth.passwords is not None:
        try:
            users = f", {len(passwords.load(policy.auth.passwords))} users"
        except PasswordFileError as exc:
            click.echo(f"invalid policy {path}: {exc}", err=True)
            raise SystemExit(EXIT_USAGE) from None
    access = (f", {len(policy.identities)} identity groups{users}, {len(policy.quotas)} quotas"
              if policy.identities or policy.quotas else "")
    click.echo(
        f"{path}: valid: {len(engine.rules)} rules, {names} destinations, "
        f"{len(policy.sources)} source groups{access}, mode {policy.mode},"
        f" default {policy.default}"
    )


@main.command()
@click.option("--from", "source", required=True, help="Client IP address.")
@click.option("--to", "target", required=True, help="HOST[:PORT] (port 443 when omitted).")
@click.option("-c", "--config", "path", type=click.Path(dir_okay=False),
              help="Policy file (default: the embedded default policy).")
@click.option("--sni", help="The TLS server name the client would send (checked like the proxy).")
@click.option("--identity", help="As if the client had proven this identity (login or"
              " client certificate).")
@click.option("--no-resolve", is_flag=True, help="Decide on the name only; skip DNS.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--path", "request_path",
              help="A registry request (/v2/...) to judge as an inspecting rule would.")
@click.option("--method", help="The method for --path.  [default: GET]")
def explain(source: str, target: str, path: str | None, sni: str | None,
            identity: str | None, no_resolve: bool,
            as_json: bool, request_path: str | None, method: str | None) -> None:
    """Show the rule that decides, why earlier rules did not, and the address checks.

    Exit 0 when the connection would go on (allowed, or reported in report mode),
    1 when denied, 2 on bad input.
    """
    from portcullis.config.access import Auth
    from portcullis.observe.explain_query import ExplainQuery
    from portcullis.proxy.explaining import answer
    from portcullis.proxy.gate import Gate
    from portcullis.proxy.identify import Authenticator

    policy = load_or_exit(path)
    try:
        query = ExplainQuery.of(source, target, sni=sni, identity=identity,
                                path=request_path, method=method)
        # Nothing is logged in here: the password file need not be readable.
        result = asyncio.run(answer(Gate(policy, authenticator=Authenticator(Auth())), query,
                                    resolve=not no_resolve))
    except BadParameter as exc:
        click.echo(f"--{exc.parameter} {exc}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    click.echo(json.dumps(result.payload, indent=2) if as_json else result.text)
    raise SystemExit(EXIT_OK if result.allowed else EXIT_DENIED)
