"""The `portcullis` command line: commands only, the logic lives in the packages.

Exit codes: 0 ok, 1 a check failed or a request is denied, 2 usage or policy error.
"""

from __future__ import annotations

import click

EXIT_OK = 0
EXIT_DENIED = 1
EXIT_USAGE = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="portcullis")
def main() -> None:
    """Portcullis: a Layer 7 egress firewall for container-registry traffic."""


# --- catalog commands: regions, domains ---


# --- policy commands: validate, explain ---


# --- serving: serve ---
