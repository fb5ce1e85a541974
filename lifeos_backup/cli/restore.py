"""`restore json` and `restore postgres` (`restore entity` and `restore pitr` live with their
groups: integration.py, pitr.py)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from lifeos_backup.cli.common import (
    SourceOption,
    audited,
    catalog,
    err,
    out,
    progress_bar,
    require_kind,
    restore_app,
    settings,
    warn,
)

if TYPE_CHECKING:  # the restore module is imported only by the command that uses it
    from lifeos_backup.kinds.postgres.restore import RestoreReport


@restore_app.command("json")
def restore_json(
    backup_id: str,
    target: Annotated[Path, typer.Option(help="Folder to restore into.")],
    force: Annotated[
        bool, typer.Option(help="Allow a non-empty target (files are replaced).")
    ] = False,
    source: SourceOption = "local",
) -> None:
    """Restore a JSON backup into TARGET, verifying every file while extracting."""
    from lifeos_backup.jobs.source import backup_source
    from lifeos_backup.kinds.json.restore import check_target, restore_archive

    with (
        audited(catalog(), "restore.json", backup_id) as entry,
        progress_bar(f"restore {backup_id}") as show,
    ):
        entry.backup_id, entry.location = backup_id, f"{socket.gethostname()}:{target.resolve()}"
        entry.detail["from"] = source
        require_kind(backup_id, "json")  # a refused restore is recorded like a failed one
        check_target(target, force)  # before a download that could take hours
        with backup_source(backup_id, settings(), catalog(), source, show) as (archive, manifest):
            count = restore_archive(archive, manifest, target, force, show)
        entry.detail["files"], entry.size = count, manifest.archive.size
    out.print(f"restored {count} files from {backup_id} into {target}")


@restore_app.command("postgres")
def restore_postgres(
    backup_id: str,
    database: Annotated[
        str,
        typer.Option(help="Database on the server of LIFEOS_DATABASE_URL, or a postgresql:// URL."),
    ],
    create: Annotated[bool, typer.Option(help="Create the database first.")] = False,
    jobs: Annotated[
        int | None,
        typer.Option(min=1, help="Parallel pg_restore jobs (default LIFEOS_RESTORE_JOBS)."),
    ] = None,
    table: Annotated[
        list[str] | None, typer.Option(help="Restore only this table (repeatable).")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Allow a database that has tables (backed-up objects replaced).")
    ] = False,
    source: SourceOption = "local",
    server: Annotated[
        str | None,
        typer.Option(help="Server to restore into (postgresql://user@host:port) when DATABASE "
                     "is a name; default: the server of LIFEOS_DATABASE_URL."),
    ] = None,
) -> None:
    """Restore a PostgreSQL backup into DATABASE, then compare row counts with the manifest.

    With --table: those tables and what they need that DATABASE lacks (types, domains,
    functions, sequences, extensions, schemas); what it has is kept as it is.
    """
    from lifeos_backup.jobs.source import backup_source
    from lifeos_backup.kinds.postgres.conninfo import restore_target
    from lifeos_backup.kinds.postgres.restore import RowCountMismatch
    from lifeos_backup.kinds.postgres.restore import restore_postgres as restore


    with (
        audited(catalog(), "restore.postgres", backup_id) as entry,
        progress_bar(f"restore {backup_id}") as show,
    ):
        entry.backup_id = backup_id
        entry.detail.update({"from": source, "tables": table or "all", "database": database})
        require_kind(backup_id, "postgres")  # a refused restore is recorded like a failed one
        restore_target(settings(), database, server)  # a named server, before any download
        with backup_source(backup_id, settings(), catalog(), source, show) as (archive, manifest):
            entry.size = manifest.archive.size
            report = restore(
                archive, manifest, settings(), database,
                create=create, jobs=jobs, tables=table or (), force=force, progress=show,
                planned=_say_planned,
                server=server,
            )
    if report.differences:
        diff = Table("table", "manifest rows", "restored rows", title="row count differences")
        for d in report.differences:
            found = "missing" if d.restored is None else str(d.restored)
            diff.add_row(d.table, str(d.expected), found)
        out.print(diff)
        raise RowCountMismatch(
            f"{len(report.differences)} of {len(report.counts)} restored tables differ from the "
            f"manifest of {backup_id}",
            hint="the restored database is not a faithful copy; see the table above",
        )
    out.print(
        f"restored {backup_id} into {report.database}: {len(report.counts)} tables, "
        "row counts match the manifest"
    )


def _say_planned(report: RestoreReport) -> None:
    """What a table restore keeps of the target and leaves out, before it restores anything."""
    if report.kept:
        err.print(
            f"kept as the target has them: {', '.join(report.kept)}",
            highlight=False, markup=False, soft_wrap=True,
        )
    for line in report.warnings:
        warn(line)
