"""`lifeos-backup wal-push`, `wal-fetch` (archive_command, restore_command) and the `wal` group
(`wal stream`, `wal slot status|drop`: the WAL stream, docs/pitr.md).

The same code as the light `lifeos-wal push|fetch` entry point (lifeos_backup.wal.cli), which
starts several times faster (no Typer, Rich or pydantic import): prefer `lifeos-wal` in
archive_command and restore_command (docs/pitr.md has the measured start-up times).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

import typer

from lifeos_backup.cli.common import app, human_size, out, settings

if TYPE_CHECKING:
    from lifeos_backup.core.settings import Settings


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


wal_app = typer.Typer(
    no_args_is_help=True, help="The WAL stream (pg_receivewal) and its replication slot."
)
slot_app = typer.Typer(no_args_is_help=True, help="The WAL stream's replication slot.")
app.add_typer(wal_app, name="wal")
wal_app.add_typer(slot_app, name="slot")

SlotOption = Annotated[
    str | None, typer.Option("--slot", help="Slot name (default: LIFEOS_WAL_SLOT).")
]


def _database_settings() -> Settings:
    """The settings, refusing without a database (never the local socket by default)."""
    from lifeos_backup.core.errors import ConfigError

    s = settings()
    if s.database_url is None:
        raise ConfigError(
            "no database configured",
            "LIFEOS_DATABASE_URL is not set",
            "set it to the primary the WAL stream replicates from",
        )
    return s


@wal_app.command("stream")
def wal_stream() -> None:
    """Run pg_receivewal into the WAL archive until stopped (what `up` runs when
    LIFEOS_WAL_STREAM=1; the compose service `wal-stream` runs this)."""
    from lifeos_backup.kinds.basebackup.streaming import stream_config
    from lifeos_backup.service.stream import run_stream

    cfg = stream_config(_database_settings())
    os.umask(0o027)  # archived files readable by the server's group (see docs/pitr.md)
    run_stream(settings(), cfg)


@slot_app.command("status")
def slot_status(
    slot: SlotOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """How much WAL the slot holds back on the primary and whether its receiver streams."""
    import json

    from lifeos_backup.kinds.basebackup.streaming import slot_status as ask

    status = ask(_database_settings(), slot)
    if as_json:
        out.print_json(json.dumps(status.as_dict()))
        return
    if not status.exists:
        out.print(f"slot {status.slot}: does not exist", highlight=False)
        return
    lag = human_size(status.lag_bytes)
    seconds = "-" if status.lag_seconds is None else f"{status.lag_seconds:.1f} s"
    lines = [
        f"slot {status.slot}: {'streaming' if status.streaming else 'NOT streaming'}"
        f" ({status.state or 'no receiver connected'}, {status.sync_state or '-'})",
        f"held back: {lag} (restart {status.restart_lsn or '-'}, current {status.current_lsn})",
        f"receiver lag: {seconds}; wal_status {status.wal_status or '-'}; "
        f"max_slot_wal_keep_size {status.max_slot_wal_keep_size}",
    ]
    for line in lines:
        out.print(line, highlight=False)


@slot_app.command("drop")
def slot_drop(
    slot: SlotOption = None,
    force: Annotated[
        bool, typer.Option(help="Disconnect a connected receiver first.")
    ] = False,
) -> None:
    """Drop the slot: the primary stops keeping WAL for it (stop the stream first)."""
    from lifeos_backup.kinds.basebackup.streaming import drop_slot

    dropped = drop_slot(_database_settings(), slot, force=force)
    out.print(f"dropped replication slot {dropped.slot}", highlight=False)
