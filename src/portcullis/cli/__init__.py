"""The `portcullis` command line: commands only, the logic lives in the packages.

Exit codes: 0 ok, 1 a check failed or a request is denied, 2 usage or policy error.
Each command group is a module that registers its commands on `main` (common.py)
when it is imported, as it is here.
"""

from portcullis.cli import audit, ca, catalog, check, export, learn, passwd, policy, serve  # noqa: F401  # noqa: F401
from portcullis.cli.common import EXIT_DENIED, EXIT_OK, EXIT_USAGE, main

__all__ = ["EXIT_DENIED", "EXIT_OK", "EXIT_USAGE", "main"]
