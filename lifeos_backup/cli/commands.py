"""The whole `lifeos-backup` command tree, and the runner that never shows a traceback.

Each command group module registers its commands on the Typer app of lifeos_backup.cli.common
when imported; this module imports them all, in the order `--help` lists them. Only the entry
point (lifeos_backup.cli.main) imports this module.
"""

from __future__ import annotations

import os
import sys

from lifeos_backup.cli import errors as cli_errors
from lifeos_backup.cli.common import app, settings

# The command groups, in the order `--help` lists their commands (importing registers them).
# isort: off
from lifeos_backup.cli import backup, catalog, restore, service  # noqa: F401
from lifeos_backup.cli import audit, integration, monitoring, offsite, wal, pitr  # noqa: F401
from lifeos_backup.cli import browse  # noqa: F401
from lifeos_backup.cli import forget, doctor  # noqa: F401
from lifeos_backup.cli import dashboard  # noqa: F401
# isort: on

__all__ = ["app", "main"]


def _catalog_url() -> str:
    return settings().effective_catalog_url


def main() -> None:
    """Entry point: never a traceback. Usage errors, expected failures and bugs are answered as
    lifeos_backup.cli.errors describes; the exit code is 0 only when the command succeeded."""
    os.umask(0o077)
    try:
        code = app(standalone_mode=False)  # returns the code of typer.Exit instead of exiting
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        sys.exit(cli_errors.EXIT_INTERRUPTED)
    except Exception as exc:
        sys.exit(cli_errors.exit_code(exc, _catalog_url))
    if isinstance(code, int) and code:
        sys.exit(code)
