"""`lifeos-backup`: the operators' command line.

Never a traceback (lifeos_backup.cli_errors): a usage error prints click's short message and exits
2, an expected failure one `error:` line and exits 1. Long work shows a Rich progress bar on a
terminal (on stderr), so stdout stays clean for scripts.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import redis
import redis.exceptions
import typer
from rich.console import Console
from rich.progress import DownloadColumn, MofNCompleteColumn, TimeRemainingColumn
from rich.progress import Progress as Bar
from rich.table import Table

from lifeos_backup import cli_errors
from lifeos_backup.audit import audited
from lifeos_backup.catalog import Backup, Catalog, open_catalog
from lifeos_backup.errors import ConfigError, LifeosError, NotFound
from lifeos_backup.names import LAYOUTS, kind_of_id
from lifeos_backup.offsite.source import SOURCES
from lifeos_backup.progress import Progress, ProgressFn
from lifeos_backup.settings import Settings, get_settings
from lifeos_backup.version import package_version

if TYPE_CHECKING:  # the restore module is imported only by the command that uses it
    from lifeos_backup.postgres.restore import RestoreReport

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])
restore_app = typer.Typer(no_args_is_help=True, help="Restore a backup.")
catalog_app = typer.Typer(no_args_is_help=True, help="Maintain the catalog.")
app.add_typer(restore_app, name="restore")
app.add_typer(catalog_app, name="catalog")

# How each kind is named to people, and the command that restores a backup of it.
KIND_NAMES = {"json": "JSON", "postgres": "PostgreSQL", "basebackup": "base (point-in-time)"}
RESTORED_BY = {
    "json": "restore json {id} --target DIR",
    "postgres": "restore postgres {id} --database NAME",
    "basebackup": "restore pitr --backup {id} --datadir DIR --target-time T",
}

# Not on a terminal (scripts, CI): wide enough that ids and errors are never wrapped or cut.
out = Console(width=None if sys.stdout.isatty() else 250)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 250)


def settings() -> Settings:
    return get_settings()


def require_repository(s: Settings) -> None:
    """Refuse to work without a backup repository.

    Opening the default catalog (an SQLite file inside the backup root) would otherwise create
    an empty repository wherever the command happens to run, and answer about that one. Only
    what makes backups creates a repository: `up`, the workers, `catalog rebuild --from
    offsite`. A catalog configured elsewhere (LIFEOS_CATALOG_URL) creates nothing here.
    """
    root = s.backup_root
    if s.catalog_url or root.is_dir():
        return
    shown = str(root) if root.is_absolute() or str(root).startswith(".") else f"./{root}"
    state = "is not a folder" if root.exists() else "does not exist"
    raise NotFound(
        f"no backup repository at {shown}",
        f"{root.resolve()} {state}",
        "set LIFEOS_BACKUP_ROOT or run from the folder that holds the repository; "
        "`lifeos-backup up` or a first backup creates one",
    )


def catalog() -> Catalog:
    """The catalog of an existing repository (see `require_repository`)."""
    s = settings()
    require_repository(s)
    return open_catalog(s.effective_catalog_url)


def choice(what: str, choices: Callable[[], Iterable[str]]) -> Callable[[Any], Any]:
    """A Typer callback making a value outside `choices` a usage error that names them all
    (exit 2, like a mistyped option), instead of a silent empty answer."""

    def check(value: Any) -> Any:
        allowed = sorted(choices())
        if value is not None and value not in allowed:
            raise typer.BadParameter(f"{value!r} is not {what}; choose from: {', '.join(allowed)}")
        return value

    return check


check_kind = choice("a backup kind", lambda: LAYOUTS)
check_source = choice("a source", lambda: SOURCES)
KindOption = Annotated[
    str | None, typer.Option(help=f"Only this kind: {', '.join(LAYOUTS)}.", callback=check_kind)
]
SourceOption = Annotated[
    str, typer.Option("--from", help="local, or offsite (download).", callback=check_source)
]


def require_kind(backup_id: str, wanted: str) -> None:
    """Refuse an id of another kind before reading anything, naming the command for it."""
    kind = kind_of_id(backup_id)
    if kind != wanted:
        raise ConfigError(
            f"backup {backup_id} is a {KIND_NAMES[kind]} backup, not a {KIND_NAMES[wanted]} one",
            hint=f"restore it with `lifeos-backup {RESTORED_BY[kind].format(id=backup_id)}`",
        )


@contextmanager
def progress_bar(label: str) -> Iterator[ProgressFn]:
    """A Rich bar on stderr when it is a terminal; otherwise a silent sink."""
    if not err.is_terminal:
        yield lambda _report: None
        return
    columns = (*Bar.get_default_columns()[:-1], MofNCompleteColumn(), DownloadColumn())
    with Bar(*columns, TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(report: Progress | dict[str, Any]) -> None:
            data = report.as_meta() if isinstance(report, Progress) else report
            total = data.get("bytes_total") or None
            files = data.get("files_total")
            counted = f" {data.get('files_done', 0)}/{files} files" if files else ""
            bar.update(
                task,
                description=f"{label}: {data.get('phase', '')}{counted}",
                completed=data.get("bytes_done", 0),
                total=total,
            )

        yield update


def _row(b: Backup) -> dict[str, Any]:
    from lifeos_backup.offsite.state import location

    return {
        "id": b.id,
        "kind": b.kind,
        "status": b.status,
        "location": location(b, settings().backup_root),  # local, offsite, both or none
        "offsite_status": b.offsite_status,
        "offsite_error": b.offsite_error,
        "created_at": b.created_at.isoformat(),
        "size": b.size,
        "path": str(settings().backup_root / b.path),
        "reason": b.reason,
        "initiator": b.initiator,
        "verified_at": b.verified_at.isoformat() if b.verified_at else None,
        "error": b.error,
    }


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _require_redis(url: str) -> None:
    """Fail with one clear line before Celery's own retry loops bury the cause in a traceback."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3) as client:
            client.ping()
    except (redis.exceptions.RedisError, ValueError) as exc:  # ValueError: not a Redis URL
        raise LifeosError(
            "cannot reach Redis", str(exc), "start it, check LIFEOS_REDIS_URL, or run `up`"
        ) from exc


def _print_version(value: bool) -> None:
    """`--version`: answered before any command runs or any setting is read."""
    if value:
        print(f"lifeos-backup {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the installed version and exit.",
        ),
    ] = False,
    repo: Annotated[
        Path | None,
        typer.Option(
            "--repo",
            "-r",
            help="The backup repository (default: LIFEOS_BACKUP_ROOT, else ./backups); its "
            "running workers' settings are found there.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Options of the program itself (`--version`, `--repo`), not of a command; the help text
    is the Typer app's."""
    if repo is not None:
        os.environ["LIFEOS_BACKUP_ROOT"] = str(repo)
        get_settings.cache_clear()


# Settings that decide what a backup of each kind reads, compared with the workers' own.
_MATTERS = {
    "json": ["app_dir", "json_sources", "compression", "encryption_recipients"],
    "postgres": ["database", "pg_bin_dir", "encryption_recipients"],
    "basebackup": ["database", "pg_bin_dir", "wal_archive_dir", "encryption_recipients"],
}


@app.command()
def backup(
    kind: Annotated[
        str,
        typer.Argument(help="What to back up: json, postgres, basebackup.", callback=check_kind),
    ],
    wait: Annotated[bool, typer.Option(help="Wait until verified; print the id last.")] = False,
    reason: Annotated[str, typer.Option(help="Why (kept in the catalog and manifest).")] = "",
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait with --wait.")] = 3600,
) -> None:
    """Request a backup from the workers (create -> verify -> upload -> rotate)."""
    from lifeos_backup.client import request_backup
    from lifeos_backup.settings import disagreements

    url = settings().require_redis_url()
    _require_redis(url)
    for line in disagreements(settings(), _MATTERS.get(kind, [])):
        err.print(f"warning: {line}", highlight=False, markup=False, soft_wrap=True)
    initiator = os.environ.get("USER") or "operator"
    with _client_errors(), progress_bar(f"{kind} backup") as show:
        ref = request_backup(
            kind,
            reason,
            wait=wait,
            timeout=timeout,
            app=_client_app(url),
            initiator=initiator,
            on_progress=show,
        )
    if wait:
        err.print(f"backup {ref.backup_id} verified")
        out.print(ref.backup_id, highlight=False)
    else:
        err.print(
            f"queued {kind} backup as task {ref.create_task_id}; "
            f"`lifeos-backup follow {ref.create_task_id}` waits for it and prints its backup id",
            highlight=False,
            soft_wrap=True,
        )
        out.print(ref.create_task_id, highlight=False)


@app.command()
def follow(
    task_id: Annotated[str, typer.Argument(help="The task id `backup` printed without --wait.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 3600,
) -> None:
    """Wait for a requested backup until it is verified; print its id last."""
    import uuid

    from lifeos_backup.client import follow as follow_chain

    try:
        uuid.UUID(task_id)
    except ValueError:
        raise typer.BadParameter(f"{task_id!r} is not a task id", param_hint="TASK_ID") from None
    url = settings().require_redis_url()
    _require_redis(url)
    with _client_errors(), progress_bar("backup") as show:
        backup_id = follow_chain(_client_app(url), task_id, timeout, show)
    err.print(f"backup {backup_id} verified")
    out.print(backup_id, highlight=False)


def _client_app(url: str) -> Any:
    from lifeos_backup.client import make_app

    return make_app(url)


@contextmanager
def _client_errors() -> Iterator[None]:
    """The client's failures (backup failed, no worker, Redis gone) as one `error:` line."""
    from lifeos_backup.client import BackupFailed

    try:
        yield
    except BackupFailed as exc:
        raise LifeosError(str(exc)) from exc


@app.command("list")
def list_backups(
    kind: KindOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON array for scripts.")] = False,
) -> None:
    """List backups, newest first."""
    rows = [_row(b) for b in catalog().list(kind=kind)]
    if as_json:
        out.print_json(json.dumps(rows)) if out.is_terminal else print(json.dumps(rows))
        return
    table = Table("id", "kind", "status", "location", "created (UTC)", "size", "reason")
    for r in rows:
        table.add_row(
            r["id"],
            r["kind"],
            r["status"],
            r["location"],
            r["created_at"][:19],
            _size(r["size"]),
            r["reason"],
        )
    out.print(table)


@app.command()
def show(backup_id: str) -> None:
    """Show one backup: catalog record and manifest summary."""
    from lifeos_backup.backups import locate
    from lifeos_backup.manifest import read_manifest

    row, _archive, mpath = locate(settings(), catalog(), backup_id)
    info = _row(row)
    if mpath.exists():
        m = read_manifest(mpath)
        info["manifest"] = {
            "path": str(mpath),
            "archive_sha256": m.archive.sha256,
            "compression": f"{m.compression.algorithm} {m.compression.level}",
            "files": sum(1 for f in m.iter_files() if f.type == "file"),
            "sources": [s.model_dump() for s in m.sources],
            "host": m.host,
            "tool_version": m.tool_version,
            "facts": m.facts,
        }
    print(json.dumps(info, indent=2, default=str))


@app.command()
def verify(backup_id: str) -> None:
    """Re-read a backup and check it against its manifest (here, not on a worker)."""
    from lifeos_backup.backups import verify_backup

    with (
        audited(catalog(), "verify", backup_id) as entry,
        progress_bar(f"verify {backup_id}") as show,
    ):
        entry.backup_id = backup_id
        verify_backup(backup_id, settings(), catalog(), show)
    out.print(f"{backup_id} verified")


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
    from lifeos_backup.json_restore import check_target, restore_archive
    from lifeos_backup.offsite.source import backup_source

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
    from lifeos_backup.offsite.source import backup_source
    from lifeos_backup.postgres.conninfo import restore_target
    from lifeos_backup.postgres.restore import RowCountMismatch
    from lifeos_backup.postgres.restore import restore_postgres as restore


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


@app.command()
def rotate(
    kind: KindOption = None,
    dry_run: Annotated[bool, typer.Option(help="Only show what would be deleted and why.")] = False,
) -> None:
    """Apply retention: delete what no rule keeps (never the newest verified backup)."""
    import redis

    from lifeos_backup.backups import rotate as rotate_kind
    from lifeos_backup.kinds import KINDS
    from lifeos_backup.locks import exclusive

    s = settings()
    client = redis.Redis.from_url(s.require_redis_url())
    table = Table("id", "status", "action", "why")
    for name in [kind] if kind else sorted(KINDS):
        with exclusive(client, f"rotate:{name}", s.lock_ttl, "cli"):
            if dry_run:
                result = rotate_kind(name, s, catalog(), dry_run=True)
            else:
                with audited(catalog(), "rotate", name) as entry:
                    result = rotate_kind(name, s, catalog())
                    entry.detail["deleted"] = [d.id for d in result.plan.delete]
        for d in result.plan.keep:
            table.add_row(d.id, d.status, "keep", ", ".join(d.reasons))
        for d in result.plan.delete:
            action = "would delete" if dry_run else "deleted"
            table.add_row(d.id, d.status, action, ", ".join(d.reasons))
    out.print(table)


def _say_planned(report: RestoreReport) -> None:
    """What a table restore keeps of the target and leaves out, before it restores anything."""
    if report.kept:
        err.print(
            f"kept as the target has them: {', '.join(report.kept)}",
            highlight=False, markup=False, soft_wrap=True,
        )
    for line in report.warnings:
        warn(line)


def warn(text: str) -> None:
    """One `warning:` line on stderr (above a live progress bar on a terminal)."""
    err.print(f"warning: {text}", highlight=False, markup=False, soft_wrap=True)


@catalog_app.command("rebuild")
def catalog_rebuild(
    source: Annotated[
        str,
        typer.Option(
            "--from",
            help="local (manifests on disk) or offsite (the bucket).",
            callback=check_source,
        ),
    ] = "local",
    trust_manifests: Annotated[
        bool,
        typer.Option(
            "--trust-manifests",
            help="Do not re-read the archives: list them unverified (never verified).",
        ),
    ] = False,
) -> None:
    """Recreate the catalog from the repository, re-checking every archive (exit 0 once it is
    rebuilt; what was skipped is named in warnings and the summary). A corrupt or missing
    catalog file is replaced by a new one; the old file is kept aside."""
    from lifeos_backup import rebuild

    s = settings()
    if source == "offsite":  # disaster recovery: may create the repository
        report, _found = rebuild.rebuild_offsite(s, warn=warn)
    else:
        require_repository(s)
        with progress_bar("catalog rebuild") as show:
            report = rebuild.rebuild_local(s, trust=trust_manifests, progress=show, warn=warn)
    for line in rebuild.summary(report, source):
        out.print(line, highlight=False, markup=False, soft_wrap=True)


@app.command()
def up() -> None:
    """Start workers (dumps; the other queues), Beat and Flower (embedded Redis if no URL)."""
    from lifeos_backup.up import run_stack

    raise typer.Exit(run_stack(settings()))


def _catalog_url() -> str:
    return settings().effective_catalog_url


def main() -> None:
    """Entry point: never a traceback. Usage errors, expected failures and bugs are answered as
    lifeos_backup.cli_errors describes; the exit code is 0 only when the command succeeded."""
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


# `audit` (list, verify, rotate) registers itself on `app`.
import lifeos_backup.audit_cli  # noqa: E402

# Commands for working with the main app (rollback-to-json, restore entity, flags) register
# themselves on `app` and `restore_app`; see that module.
import lifeos_backup.cli_integration  # noqa: E402, F401

# Monitoring (`drill`, `selftest`, `status`, `metrics`) registers itself on `app`.
from lifeos_backup.monitoring import cli as _monitoring_cli  # noqa: E402, F401

# Off-site commands (`offsite sync|upload|rotate`, `keygen`) register themselves on `app`.
from lifeos_backup.offsite import cli as _offsite_cli  # noqa: E402, F401

# Point-in-time recovery (`wal-push`, `wal-fetch`, `restore pitr`) registers itself likewise.
from lifeos_backup.pitr import cli as _pitr_cli  # noqa: E402, F401
