"""`lifeos-backup`: the operators' command line (Typer), one module per command group.

`main` is the console script. It answers `wal-push` / `wal-fetch` (lifeos_backup.wal.cli,
imported only for them) before Typer and Rich load, so that archive_command = 'lifeos-backup
wal-push %p' keeps up with WAL; every other command goes to the full command tree
(lifeos_backup.cli.commands), imported only then. Nothing else imports that module: the group
modules import lifeos_backup.cli.common.

The command tree imports only what Typer needs to know the commands (their options and help):
each command imports the settings, the catalog (SQLAlchemy), Redis, Celery and the rest when it
runs, so that `--help`, `list` or `status` do not pay for what they do not use
(tests/unit/test_cli_imports.py, benchmarks/cli_start.py).
"""

from __future__ import annotations

import sys


def main() -> None:
    """The `lifeos-backup` entry point."""
    if len(sys.argv) > 1 and sys.argv[1].startswith("wal-"):  # the archiver only: not for `list`
        from lifeos_backup.wal.cli import FAST_COMMANDS
        from lifeos_backup.wal.cli import main as wal_main

        if sys.argv[1] in FAST_COMMANDS:
            wal_main([FAST_COMMANDS[sys.argv[1]], *sys.argv[2:]])
    from lifeos_backup.cli.commands import main as full_cli  # the Typer tree: only when needed

    full_cli()
