"""Deleting a backup: the one code path rotation and `forget` share, and the finish of one that a
crash interrupted.

Rotation removes local copies only (remote copies have their own retention). `forget` removes
both, in this order, holding the backup's lease: the row is marked `deleting` (and its off-site
status too, when it has a remote copy), the remote objects go (lifeos_backup.storage.offsite.sync
.delete_remote), then the local manifest and archive (manifest first: an archive without its
manifest is incomplete by definition), and the row is marked `deleted`. A process killed in
between leaves the row `deleting`; `finish_deletions` completes it, run by every rotation and
every off-site sync, so no backup is ever left half deleted.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lifeos_backup.core.errors import ConfigError
from lifeos_backup.core.fsutil import remove_quietly
from lifeos_backup.core.settings import Settings
from lifeos_backup.formats.manifest import manifest_path
from lifeos_backup.jobs.leases import try_lease
from lifeos_backup.storage.catalog import Backup, Catalog
from lifeos_backup.storage.catalog.store import DELETED, DELETING
from lifeos_backup.storage.offsite import state

log = logging.getLogger(__name__)

# Off-site statuses that may leave objects in the bucket (a copy, or a part of one).
REMOTE_LEFT = (state.UPLOADING, state.UPLOADED, state.FAILED, state.MISSING, state.DAMAGED,
               state.DELETING)  # fmt: skip


def has_remote(row: Backup) -> bool:
    """The bucket may hold objects of this backup (a copy, or a part of an upload)."""
    return row.offsite_status in REMOTE_LEFT and bool(row.offsite_key or row.offsite_upload_id)


def remove_local(settings: Settings, catalog: Catalog, backup_id: str, reasons: str) -> None:
    """Remove the backup's manifest (first), then its archive; mark the row `deleted`.

    The caller holds the backup's lease. Files already gone are fine.
    """
    row = catalog.get(backup_id)
    archive: Path = settings.backup_root / row.path
    remove_quietly(manifest_path(archive, backup_id), archive)
    catalog.update(backup_id, status=DELETED, error=reasons or None)


def remove_remote(settings: Settings, catalog: Catalog, backup_id: str, reasons: str) -> None:
    """Remove the backup's remote copy, if the bucket may hold one (S3 client made on use)."""
    row = catalog.get(backup_id)
    if not has_remote(row):
        return
    if not settings.offsite_enabled:
        raise ConfigError(
            f"backup {backup_id} has an off-site copy, but off-site storage is not configured",
            "LIFEOS_S3_BUCKET is not set",
            "set the LIFEOS_S3_* settings the copy was uploaded with",
        )
    from lifeos_backup.storage.offsite.sync import delete_remote
    from lifeos_backup.storage.offsite.targets import configured, connect

    held = state.copies(catalog, backup_id)
    for target in configured(settings):
        if target.name in held:
            delete_remote(
                connect(target, settings), catalog, backup_id, reasons, "forget", target.name
            )


def delete_backup(
    settings: Settings, catalog: Catalog, backup_id: str, reasons: str, *, remote: bool
) -> None:
    """Delete one backup whose lease the caller holds: mark it `deleting`, remove its remote copy
    (when `remote`), then its local files, then mark it `deleted`."""
    if remote:
        row = catalog.get(backup_id)
        fields = {"offsite_status": state.DELETING} if has_remote(row) else {}
        catalog.update(backup_id, status=DELETING, error=reasons or None, **fields)
        remove_remote(settings, catalog, backup_id, reasons)
    remove_local(settings, catalog, backup_id, reasons)


def finish_deletions(settings: Settings, catalog: Catalog, owner: str) -> list[str]:
    """Complete every deletion a crash left `deleting`; returns their ids.

    A backup whose lease is held (its `forget` still runs) is left for the next run; one with a
    remote copy while off-site storage is not configured is left too, with a warning.
    """
    finished: list[str] = []
    for row in catalog.list(statuses=(DELETING,)):
        with try_lease(settings.backup_root, row.id, owner, "delete") as free:
            if not free:
                continue
            if has_remote(row) and not settings.offsite_enabled:
                log.warning("%s is left deleting: its off-site copy needs LIFEOS_S3_BUCKET", row.id)
                continue
            reasons = row.error or "forgotten"
            remove_remote(settings, catalog, row.id, reasons)
            remove_local(settings, catalog, row.id, reasons)
        log.info("finished the interrupted deletion of %s", row.id)
        finished.append(row.id)
    return finished
