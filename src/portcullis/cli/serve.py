"""`serve`: run the firewall."""

from __future__ import annotations

import click

from portcullis.cli.common import EXIT_USAGE, load_or_exit, main


@main.command()
@click.option("-c", "--config", "path", type=click.Path(dir_okay=False),
              help="Policy file (default: the embedded default policy).")
@click.option("--log", "log_path", help="Decision log file (default: log.path, or stdout).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Processes sharing the listen ports (SO_REUSEPORT).")
@click.option("--no-uvloop", is_flag=True, help="Use asyncio's own event loop.")
def serve(path: str | None, log_path: str | None, workers: int, no_uvloop: bool) -> None:
    """Run the firewall."""
    from portcullis.proxy.run import serve_forever

    policy = load_or_exit(path)
    if policy.tls_inspection is not None:
        from portcullis.basics.errors import ConfigError
        from portcullis.proxy.inspector import inspector_for

        try:
            inspector_for(policy.tls_inspection)
        except ConfigError as exc:
            click.echo(f"cannot inspect: {exc}", err=True)
            raise SystemExit(EXIT_USAGE) from None
    raise SystemExit(
        serve_forever(policy, path, log_path=log_path, workers=workers, use_uvloop=not no_uvloop)
    )
