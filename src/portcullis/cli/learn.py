"""`learn`: a minimal policy from the decision logs of report mode."""

from __future__ import annotations

import click

from portcullis.basics.errors import LearnError
from portcullis.cli.common import EXIT_USAGE, main


@main.command()
@click.argument("logs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--registry-aware", is_flag=True,
              help="Widen registry names to the registry's wildcards or catalog reference.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the policy here (default: stdout).")
def learn(logs: tuple[str, ...], registry_aware: bool, output: str | None) -> None:
    """Print a minimal policy allowing exactly what decision LOGS (report mode) saw."""
    from portcullis.tools import learn as learning

    try:
        found = learning.read_logs(logs)
        policy = learning.learn_policy(found, registry_aware=registry_aware)
    except (OSError, UnicodeDecodeError, LearnError) as exc:
        click.echo(f"learn: {exc}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    text = learning.render(policy, found, logs, registry_aware=registry_aware)
    if output:
        with open(output, "w", encoding="utf-8") as file:
            file.write(text)
    else:
        click.echo(text, nl=False)
    def count(n: int, what: str) -> str:
        return f"{n} {what}" + ("" if n == 1 else "s")

    rules = policy["rules"]
    names = sum(len(rule["to"]) for rule in rules)
    where = f"; written to {output}" if output else ""
    click.echo(f"learnt {count(len(policy['sources']), 'source group')}, "
               f"{count(len(rules), 'rule')}, {count(names, 'destination')} from "
               f"{count(found.decisions, 'decision')}{where}", err=True)
    for what, n in sorted(found.skipped.items()):
        click.echo(f"  not learnt: {count(n, 'decision')} {what}", err=True)
