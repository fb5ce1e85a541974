"""Off-site tasks: the chain's upload step, and the daily sync (Beat).

Thin, like every task: locks and wiring here, the work in lifeos_backup.storage.offsite.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lifeos_backup.core.errors import AlreadyRunning, OffsiteError
from lifeos_backup.jobs.deletion import finish_deletions
from lifeos_backup.jobs.locks import HeldLock, exclusive
from lifeos_backup.jobs.routes import UPLOAD
from workers.base import LifeosTask
from workers.celery_app import app

log = logging.getLogger(__name__)
SYNC = "lifeos.offsite.sync"


@app.task(bind=True, base=LifeosTask, name=UPLOAD)
def upload(self: LifeosTask, backup_id: str) -> str:
    """Copy the verified backup off-site; a quiet no-op without a bucket. Returns the id.

    A failure after the retries leaves the local backup verified (good) and the reason in the
    catalog; the daily sync tries again. If the sync is uploading this backup right now, this step
    leaves it to the sync.
    """
    if not self.settings.offsite_enabled:
        return backup_id
    from lifeos_backup.storage.offsite.upload import upload_backup

    try:
        with self.exclusive(f"upload:{backup_id}") as held:
            upload_backup(backup_id, self.settings, self.catalog, self.reporter(held))
    except AlreadyRunning as exc:
        log.info("upload of %s left to the running one: %s", backup_id, exc)
    return backup_id


@app.task(bind=True, base=LifeosTask, name=SYNC)
def sync(self: LifeosTask) -> dict[str, Any]:
    """Re-check remote copies, upload what is missing, apply remote retention.

    Fails (and is retried with backoff) when some upload failed, so Flower shows it; everything
    else the run did stays done.
    """
    from lifeos_backup.storage.offsite.sync import sync as offsite_sync

    ttl, owner = self.settings.lock_ttl, self.request.id

    @contextmanager
    def lock(name: str) -> Iterator[HeldLock]:
        with exclusive(self.redis, name, ttl, owner) as held:
            yield held

    with self.exclusive("offsite-sync") as held:
        report = offsite_sync(self.settings, self.catalog, lock, self.reporter(held))
        finish_deletions(self.settings, self.catalog, owner)  # what a killed `forget` left
    if report.failed:
        first_id, first_error = next(iter(report.failed.items()))
        raise OffsiteError(
            f"off-site sync could not upload {len(report.failed)} backup(s)",
            f"{first_id}: {first_error}",
            "the sync retries with backoff; see `lifeos-backup list` (location, offsite_error)",
        )
    return report.as_dict()
