"""`lifeos-backup wal-push`, `wal-fetch` and `restore pitr`; registered on the main Typer app.

`wal-push` / `wal-fetch` are the same code as the light `lifeos-wal push|fetch` entry point, which
starts several times faster (no Typer, Rich or pydantic import): prefer `lifeos-wal` in
archive_command and restore_command (docs/pitr.md has the measured start-up times).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer

from lifeos_backup.cli.common import (
    SourceOption,
    audited,
    catalog,
    choice,
    err,
    out,
    progress_bar,
    require_kind,
    restore_app,
    settings,
)


@restore_app.command("pitr")
def restore_pitr(
    datadir: Annotated[Path, typer.Option(help="New, empty data directory to create.")],
    target_time: Annotated[
        str | None, typer.Option(help='Recover to this moment, e.g. "2026-11-28 12:00:00+00".')
    ] = None,
    target_lsn: Annotated[str | None, typer.Option(help="Recover to this LSN (X/Y).")] = None,
    target_name: Annotated[
        str | None, typer.Option(help="Recover to this restore point.")
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            help="latest: everything archived and streamed (the default without a target).",
            callback=choice("a recovery target", lambda: ["latest"]),
        ),
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port of the restored server.")
    ] = None,
    start: Annotated[
        bool, typer.Option(help="Start it, wait for recovery, report the time reached.")
    ] = False,
    backup: Annotated[
        str | None, typer.Option(help="Base backup id (default: newest one before the target).")
    ] = None,
    wal_command: Annotated[
        str | None,
        typer.Option(help="Program for restore_command (default: this install's lifeos-wal)."),
    ] = None,
    os_user: Annotated[
        str | None, typer.Option(help="OS user to run the server as (default postgres if root).")
    ] = None,
    socket_dir: Annotated[
        Path | None, typer.Option(help="unix_socket_directories for the started server.")
    ] = None,
    keep_archiving: Annotated[
        bool, typer.Option(help="Leave archive_mode as it was (only to replace production).")
    ] = False,
    timeout: Annotated[int, typer.Option(min=1, help="Seconds to wait for recovery.")] = 3600,
    source: SourceOption = "local",
) -> None:
    """Restore PostgreSQL to a point in time from a base backup and the WAL archive.

    `--from offsite` downloads both from the bucket (after `catalog rebuild --from offsite` on a
    machine that has nothing else): the WAL lands beside the data directory in DATADIR.wal.
    """
    from lifeos_backup.kinds.basebackup.restore import RecoveryTarget, parse_target_time
    from lifeos_backup.kinds.basebackup.restore import restore_pitr as run

    if target is not None and (target_time or target_lsn or target_name):
        from lifeos_backup.core.errors import ConfigError

        raise ConfigError(
            "give one recovery target", "--target latest, --target-time, --target-lsn or "
            "--target-name",
        )  # fmt: skip
    aim = target_time or target_lsn or target_name or "latest"
    target_spec = RecoveryTarget(
        time=parse_target_time(target_time) if target_time else None,
        lsn=target_lsn,
        name=target_name,
    )
    with (
        audited(catalog(), "restore.pitr", f"recovery target {aim}") as entry,
        progress_bar("restore pitr") as show,
    ):
        entry.location = f"{socket.gethostname()}:{datadir.resolve()}"
        entry.detail.update({"started": start, "port": port, "from": source})
        if backup is not None:  # a refused restore is recorded like a failed one
            require_kind(backup, "basebackup")
        result = run(
            settings(),
            catalog(),
            target_spec,
            datadir,
            port=port,
            start=start,
            backup_id=backup,
            wal_command=wal_command,
            os_user=os_user,
            socket_dir=socket_dir,
            keep_archiving=keep_archiving,
            timeout=timeout,
            progress=show,
            source=source,
        )
        entry.backup_id, entry.detail["reached"] = result.backup_id, result.reached_time
    err.print(f"laid out {result.backup_id} in {result.datadir}, recovering to {result.target}")
    if not result.started:
        if result.wal_dir is not None:
            err.print(f"WAL from off-site in {result.wal_dir}: remove it once recovery has ended")
        out.print(f"start it with: pg_ctl -D {result.datadir} start", highlight=False)
        return
    err.print(f"server log: {result.log_file}")
    if result.stop_line:
        err.print(result.stop_line, highlight=False, markup=False)
    out.print(f"recovered; last transaction replayed at {result.reached_time or 'unknown'}",
              highlight=False)  # fmt: skip
