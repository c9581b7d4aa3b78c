"""Policy commands: `validate` a file, `explain` a decision."""

from __future__ import annotations

import asyncio
import ipaddress
import json

import click

from portcullis.basics.errors import AuthorityError, BadRequest, PasswordFileError
from portcullis.basics.vocabulary import Decision
from portcullis.cli.common import EXIT_DENIED, EXIT_OK, EXIT_USAGE, load_or_exit, main
from portcullis.policy import passwords
from portcullis.policy.engine import Engine
from portcullis.policy.inspection import explain_request, inspection_for


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
@click.option("--method", default="GET", show_default=True, help="The method for --path.")
def explain(source: str, target: str, path: str | None, sni: str | None,
            identity: str | None, no_resolve: bool,
            as_json: bool, request_path: str | None, method: str) -> None:
    """Show the rule that decides, why earlier rules did not, and the address checks.

    Exit 0 when the connection would go on (allowed, or reported in report mode),
    1 when denied, 2 on bad input.
    """
    from portcullis.config.access import Auth
    from portcullis.proxy.explaining import explain_target
    from portcullis.proxy.gate import Gate
    from portcullis.proxy.identify import Authenticator

    policy = load_or_exit(path)
    try:
        client = ipaddress.ip_address(source)
    except ValueError:
        click.echo(f"--from {source!r} is not an IP address", err=True)
        raise SystemExit(EXIT_USAGE) from None
    try:
        result = asyncio.run(
            # Nothing is logged in here: the password file need not be readable.
            explain_target(Gate(policy, authenticator=Authenticator(Auth())), client, target,
                           sni=sni, resolve=not no_resolve, identity=identity)
        )
    except AuthorityError as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(EXIT_USAGE) from None
    allowed = result.verdict.allowed
    out = result.to_dict()
    text = result.to_text()
    if request_path is not None:
        rule = result.verdict.rule
        try:
            judged = explain_request(
                inspection_for(rule.inspect if rule else None, result.verdict.decision),
                method, request_path, report_mode=policy.mode == "report")
        except BadRequest as exc:
            click.echo(f"--path {request_path!r}: {exc}", err=True)
            raise SystemExit(EXIT_USAGE) from None
        out["request"] = judged.to_dict()
        text += "\n" + judged.to_text()
        allowed = allowed and judged.decision is not Decision.DENY
    click.echo(json.dumps(out, indent=2) if as_json else text)
    raise SystemExit(EXIT_OK if allowed else EXIT_DENIED)
