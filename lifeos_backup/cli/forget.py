"""`lifeos-backup forget ID...`: delete chosen backups locally and off-site, audited.

Registered on the main `lifeos-backup` app. The decision and the deleting are
lifeos_backup.jobs.forget; this module adds the locks, the audit records and the output.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Annotated

import typer
from rich.table import Table

from lifeos_backup.cli.common import app, audited, catalog, human_size, out, settings, warn


@contextlib.contextmanager
def _upload_lock(backup_id: str) -> Iterator[None]:
    """The Redis lock an upload of the backup holds (AlreadyRunning while one runs); without a
    reachable Redis no upload can run from a worker either, so none is needed."""
    import redis

    from lifeos_backup.jobs.locks import exclusive
    from lifeos_backup.monitoring.broker import broker_url

    s = settings()
    url = broker_url(s)
    if not s.offsite_enabled or url is None:
        yield
        return
    client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        warn(f"no upload lock for {backup_id} (Redis: {exc}); make sure no upload of it runs")
        yield
        return
    with exclusive(client, f"upload:{backup_id}", s.lock_ttl, f"cli:{os.getpid()}"):
        yield


@app.command()
def forget(
    backup_ids: Annotated[list[str], typer.Argument(metavar="ID", help="Backups to delete.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only show what would be deleted.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Also delete the newest verified backup of a kind, or a base backup "
            "point-in-time recovery still starts from.",
        ),
    ] = False,
) -> None:
    """Delete backups locally and off-site (one audit record each); refuses the newest verified
    backup of a kind and a base backup recovery still needs, unless --force."""
    from lifeos_backup.jobs.forget import forget_one, plan_forget

    s, c = settings(), catalog()
    doomed = plan_forget(s, c, backup_ids, force=force)
    if dry_run:
        table = Table("id", "kind", "status", "where", "size", "action")
        for d in doomed:
            table.add_row(d.id, d.kind, d.status, d.where, human_size(d.size), "would delete")
        out.print(table)
        return
    for d in doomed:
        with audited(c, "forget", d.id) as entry:
            entry.backup_id, entry.size = d.id, d.size
            entry.detail.update(
                {"kind": d.kind, "status": d.status, "where": d.where, "force": force}
            )
            with _upload_lock(d.id):
                forget_one(s, c, d.id, f"cli:{os.getpid()}")
        out.print(f"deleted {d.id} ({d.where})", highlight=False)
