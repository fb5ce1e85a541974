"""`backup`, `follow`, `verify`, `rotate`: a backup's life from request to retention."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.table import Table

from lifeos_backup.cli.common import (
    KindOption,
    app,
    audited,
    catalog,
    check_kind,
    err,
    out,
    progress_bar,
    settings,
)
from lifeos_backup.core.errors import LifeosError


def _require_redis(url: str) -> None:
    """Fail with one clear line before Celery's own retry loops bury the cause in a traceback."""
    import redis
    import redis.exceptions

    try:
        with redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3) as client:
            client.ping()
    except (redis.exceptions.RedisError, ValueError) as exc:  # ValueError: not a Redis URL
        raise LifeosError(
            "cannot reach Redis", str(exc), "start it, check LIFEOS_REDIS_URL, or run `up`"
        ) from exc


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
    from lifeos_backup.app.client import request_backup
    from lifeos_backup.core.settings import disagreements

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

    from lifeos_backup.app.client import follow as follow_chain

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
    from lifeos_backup.app.client import make_app

    return make_app(url)


@contextmanager
def _client_errors() -> Iterator[None]:
    """The client's failures (backup failed, no worker, Redis gone) as one `error:` line."""
    from lifeos_backup.app.client import BackupFailed

    try:
        yield
    except BackupFailed as exc:
        raise LifeosError(str(exc)) from exc


@app.command()
def verify(backup_id: str) -> None:
    """Re-read a backup and check it against its manifest (here, not on a worker)."""
    from lifeos_backup.jobs.backups import verify_backup

    with (
        audited(catalog(), "verify", backup_id) as entry,
        progress_bar(f"verify {backup_id}") as show,
    ):
        entry.backup_id = backup_id
        verify_backup(backup_id, settings(), catalog(), show)
    out.print(f"{backup_id} verified")


@app.command()
def rotate(
    kind: KindOption = None,
    dry_run: Annotated[bool, typer.Option(help="Only show what would be deleted and why.")] = False,
) -> None:
    """Apply retention: delete what no rule keeps (never the newest verified backup)."""
    import redis

    from lifeos_backup.jobs.backups import rotate as rotate_kind
    from lifeos_backup.jobs.locks import exclusive
    from lifeos_backup.kinds.registry import KINDS

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
