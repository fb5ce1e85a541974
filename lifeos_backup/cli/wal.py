"""`lifeos-backup wal-push` and `wal-fetch`: the archive_command and restore_command.

The same code as the light `lifeos-wal push|fetch` entry point (lifeos_backup.wal.cli), which
starts several times faster (no Typer, Rich or pydantic import): prefer `lifeos-wal` in
archive_command and restore_command (docs/pitr.md has the measured start-up times).
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from lifeos_backup.cli.common import (
    app,
)


@app.command("wal-push")
def wal_push(
    path: Annotated[str, typer.Argument(help="%p: the WAL file to archive.")],
    archive_dir: Annotated[
        str | None, typer.Option(help="Default: LIFEOS_WAL_ARCHIVE_DIR.")
    ] = None,
) -> None:
    """archive_command: archive one WAL file durably (exit 0 only once stored)."""
    from lifeos_backup.wal.cli import run_push

    os.umask(0o027)  # archived files readable by the server's group (see docs/pitr.md)
    raise typer.Exit(run_push(path, archive_dir))


@app.command("wal-fetch")
def wal_fetch(
    name: Annotated[str, typer.Argument(help="%f: the WAL file name wanted.")],
    dest: Annotated[str, typer.Argument(help="%p: where to write it.")],
    archive_dir: Annotated[
        str | None, typer.Option(help="Default: LIFEOS_WAL_ARCHIVE_DIR.")
    ] = None,
) -> None:
    """restore_command: restore one WAL file (exit 1 quietly when the archive lacks it)."""
    from lifeos_backup.wal.cli import run_fetch

    raise typer.Exit(run_fetch(name, dest, archive_dir))
