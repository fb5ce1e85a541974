"""`restore json` and `restore postgres` (`restore entity` and `restore pitr` live with their
groups: integration.py, pitr.py)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from lifeos_backup.cli.browse import check_patterns, pattern_of
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
    from lifeos_backup.storage.audit import AuditEntry

ProductionOption = Annotated[
    bool,
    typer.Option(
        "--i-know-this-is-production",
        help="Restore over production (the app folder, or the database of "
        "LIFEOS_DATABASE_URL) without typing its name again at the prompt.",
    ),
]


def confirm_production(entry: AuditEntry, what: str, name: str, confirmed: bool) -> None:
    """A restore over production goes ahead only with --i-know-this-is-production, or with its
    name typed again at a terminal's prompt; the record says which, and who (the dashboard asks
    a second admin instead: lifeos_backup.web.restores)."""
    from lifeos_backup.core.errors import ConfigError
    from lifeos_backup.storage.audit import operator

    entry.detail["production"] = True
    how = "--i-know-this-is-production"
    if not confirmed and sys.stdin.isatty():
        err.print(f"{what} is production: this restore overwrites it.", highlight=False)
        typed = typer.prompt(f"type {name!r} again to go ahead", default="", show_default=False)
        confirmed, how = typed.strip() == name, "typed name"
    if not confirmed:
        raise ConfigError(
            f"refusing to restore over production: {what}",
            "a restore there overwrites what the app runs on",
            "pass --i-know-this-is-production, or type the name at the prompt; or restore "
            "somewhere else and compare first",
        )
    entry.detail["confirmed_by"] = how
    entry.detail["approved_by"] = operator()


@restore_app.command("json")
def restore_json(
    backup_id: str,
    target: Annotated[Path | None, typer.Option(help="Folder to restore into.")] = None,
    force: Annotated[
        bool,
        typer.Option(
            help="Allow a non-empty target (files are replaced); with --include, replace the "
            "selected files that already exist there."
        ),
    ] = False,
    source: SourceOption = "local",
    include: Annotated[
        list[str] | None,
        typer.Option(
            help="Only the files this path or glob names, e.g. 'data/characters/*.json' "
            "(repeatable); the target may hold other files.",
            callback=check_patterns,
        ),
    ] = None,
    to_stdout: Annotated[
        bool,
        typer.Option(
            "--to-stdout", help="Write the one file --include selects to stdout, nothing else."
        ),
    ] = False,
    production: ProductionOption = False,
) -> None:
    """Restore a JSON backup into TARGET, verifying every file while extracting.

    With --include, only the selected regular files, each checked against the manifest before
    it is moved into place; an existing file is never replaced without --force.
    """
    from lifeos_backup.jobs.source import backup_source
    from lifeos_backup.kinds.json.restore import (
        check_target,
        extract_one,
        restore_archive,
        restore_selected,
    )
    from lifeos_backup.web.guard import production_folder

    if to_stdout and not include:
        raise typer.BadParameter("--to-stdout needs --include", param_hint="'--to-stdout'")
    if to_stdout and target is not None:
        raise typer.BadParameter("give --target or --to-stdout, not both", param_hint="'--target'")
    if target is None and not to_stdout:
        raise typer.BadParameter(
            "a folder to restore into is needed (or --include GLOB --to-stdout)",
            param_hint="'--target'",
        )
    patterns = [pattern_of(text) for text in include or ()]
    with (
        audited(catalog(), "restore.json", backup_id) as entry,
        progress_bar(f"restore {backup_id}") as show,
    ):
        where = "stdout" if target is None else str(target.resolve())
        entry.backup_id, entry.location = backup_id, f"{socket.gethostname()}:{where}"
        entry.detail["from"] = source
        if patterns:
            entry.detail["include"] = [p.text for p in patterns]
        require_kind(backup_id, "json")  # a refused restore is recorded like a failed one
        if target is not None and production_folder(settings(), target):
            app_dir = f"the app folder {settings().app_dir}"
            confirm_production(entry, app_dir, str(target), production)
        if target is not None and not patterns:
            check_target(target, force)  # before a download that could take hours
        with backup_source(backup_id, settings(), catalog(), source, show) as (archive, manifest):
            if target is None:
                extract_one(archive, manifest, patterns, sys.stdout.buffer, show)
                count = 1
            elif patterns:
                count = restore_selected(archive, manifest, patterns, target, force, show)
            else:
                count = restore_archive(archive, manifest, target, force, show)
        entry.detail["files"], entry.size = count, manifest.archive.size
    if target is not None:
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
    production: ProductionOption = False,
) -> None:
    """Restore a PostgreSQL backup into DATABASE, then compare row counts with the manifest.

    With --table: those tables and what they need that DATABASE lacks (types, domains,
    functions, sequences, extensions, schemas); what it has is kept as it is.
    """
    from lifeos_backup.jobs.source import backup_source
    from lifeos_backup.kinds.postgres.conninfo import restore_target
    from lifeos_backup.kinds.postgres.restore import RowCountMismatch
    from lifeos_backup.kinds.postgres.restore import restore_postgres as restore
    from lifeos_backup.web.guard import production_database, production_name


    with (
        audited(catalog(), "restore.postgres", backup_id) as entry,
        progress_bar(f"restore {backup_id}") as show,
    ):
        entry.backup_id = backup_id
        entry.detail.update({"from": source, "tables": table or "all", "database": database})
        require_kind(backup_id, "postgres")  # a refused restore is recorded like a failed one
        restore_target(settings(), database, server)  # a named server, before any download
        if production_database(settings(), database, server):
            name = production_name(settings()) or database
            confirm_production(entry, f"the database {name}", name, production)
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
