"""Where a backup is: on this disk, off-site, both or nowhere, from its catalog row alone.

The off-site statuses and these questions live apart from lifeos_backup.storage.offsite.state
(which writes them, through SQLAlchemy) so that `lifeos-backup list` answers them from the rows
lifeos_backup.storage.catalog.view reads, without importing the ORM.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from lifeos_backup.storage.catalog.schema import DELETED as LOCAL_DELETED

if TYPE_CHECKING:
    from lifeos_backup.storage.catalog.models import Backup
    from lifeos_backup.storage.catalog.view import BackupRow

BackupRecord: TypeAlias = "Backup | BackupRow"  # an ORM row, or the same row read by the view

# Off-site status of a backup (column backups.offsite_status; NULL: never tried).
UPLOADING = "uploading"  # started; a crash leaves it so, and the next sync resumes it
UPLOADED = "uploaded"  # archive and manifest remote, size and checksums confirmed: good
FAILED = "failed"  # last attempt failed (reason in offsite_error); the next sync retries
MISSING = "missing"  # was uploaded, but the remote archive or manifest is gone
DAMAGED = "damaged"  # was uploaded, but the remote archive's size or checksum changed
DELETING = "deleting"  # remote retention started removing it (manifest first)
DELETED = "deleted"  # removed by remote retention
RETRYABLE = (None, UPLOADING, FAILED, MISSING, DAMAGED)  # what a sync uploads (if verified)


def archive_path(row: BackupRecord, backup_root: Path) -> Path:
    return backup_root / row.path


def is_local(row: BackupRecord, backup_root: Path) -> bool:
    """The local copy exists: not rotated away, and the archive is on this machine's disk."""
    return row.status != LOCAL_DELETED and archive_path(row, backup_root).exists()


def is_offsite(row: BackupRecord) -> bool:
    return row.offsite_status == UPLOADED


def location(row: BackupRecord, backup_root: Path) -> str:
    """Where a backup can be restored from: local, offsite, both, or none."""
    local, remote = is_local(row, backup_root), is_offsite(row)
    if local and remote:
        return "both"
    return "local" if local else "offsite" if remote else "none"


def remote_only(row: BackupRecord, backup_root: Path) -> bool:
    """Known from its off-site copy alone (e.g. after `catalog rebuild --from offsite`)."""
    return is_offsite(row) and not archive_path(row, backup_root).exists()
