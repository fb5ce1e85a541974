"""The backup pipeline's steps: create -> verify -> upload -> rotate, passing a backup id along.

The upload step (off-site copy) lives in tasks/offsite.py.
"""

from __future__ import annotations

from typing import Any

from lifeos_backup.app.client import backup_chain
from lifeos_backup.jobs import backups
from lifeos_backup.jobs.queues import pin_to_host
from lifeos_backup.jobs.routes import CREATE, ROTATE, VERIFY
from lifeos_backup.kinds.registry import KINDS
from lifeos_backup.storage.repository import kind_of_id
from workers.base import LifeosTask
from workers.celery_app import app


@app.task(bind=True, base=LifeosTask, name=CREATE)
def create(self: LifeosTask, kind: str, reason: str = "", initiator: str = "operator") -> str:
    """Write the archive and manifest while holding the kind's lock; returns the backup id."""
    with self.exclusive(f"backup:{kind}") as held:
        manifest = backups.create_backup(
            kind,
            self.settings,
            self.catalog,
            reason=reason,
            initiator=initiator,
            progress=self.reporter(held),
            owner=self.request.id,
            then=self.next_task_id(),
            attempt=self.request.retries + 1,
        )
    if not self.settings.shared_repository:  # the archive is on this host's disk only
        pin_to_host(self.request.chain, self.settings.host_queue)
    return manifest.backup_id


@app.task(bind=True, base=LifeosTask, name=VERIFY)
def verify(self: LifeosTask, backup_id: str) -> str:
    """Re-read the archive against its manifest; the backup is good only after this passed."""
    with self.busy_means_retry():
        backups.verify_backup(
            backup_id, self.settings, self.catalog, self.reporter(), owner=self.request.id
        )
    return backup_id


@app.task(bind=True, base=LifeosTask, name=ROTATE)
def rotate(
    self: LifeosTask, backup_id: str | None = None, kind: str | None = None
) -> dict[str, list[str]]:
    """Apply retention to the kind of `backup_id` (after it verified), or to `kind`, or to all."""
    kinds = [kind_of_id(backup_id)] if backup_id else [kind] if kind else sorted(KINDS)
    deleted: dict[str, list[str]] = {}
    for name in kinds:
        with self.exclusive(f"rotate:{name}"):
            result = backups.rotate(name, self.settings, self.catalog)
        deleted[name] = [d.id for d in result.plan.delete]
    return deleted


@app.task(bind=True, base=LifeosTask, name="lifeos.backup.start")
def start(
    self: LifeosTask, kind: str, reason: str = "scheduled", initiator: str = "beat"
) -> dict[str, Any]:
    """Beat's entry point: launch the whole chain for `kind` and return its task ids."""
    steps, ref = backup_chain(self.app, kind, reason, initiator)
    steps.apply_async()
    return {
        "create": ref.create_task_id,
        "verify": ref.verify_task_id,
        "upload": ref.upload_task_id,
        "rotate": ref.rotate_task_id,
    }
