"""The off-site side of a catalog row: statuses, where a backup is, and recorded upload parts.

No boto3 here: `lifeos-backup list` and the shared lifecycle read these without network code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import delete, select

from lifeos_backup.storage.catalog import Backup, Catalog
from lifeos_backup.storage.catalog.models import OffsitePart
from lifeos_backup.storage.catalog.store import DELETED as LOCAL_DELETED
from lifeos_backup.storage.catalog.store import VERIFIED, utcnow

# Off-site status of a backup (column backups.offsite_status; NULL: never tried).
UPLOADING = "uploading"  # started; a crash leaves it so, and the next sync resumes it
UPLOADED = "uploaded"  # archive and manifest remote, size and checksums confirmed: good
FAILED = "failed"  # last attempt failed (reason in offsite_error); the next sync retries
MISSING = "missing"  # was uploaded, but the remote archive or manifest is gone
DAMAGED = "damaged"  # was uploaded, but the remote archive's size or checksum changed
DELETING = "deleting"  # remote retention started removing it (manifest first)
DELETED = "deleted"  # removed by remote retention
RETRYABLE = (None, UPLOADING, FAILED, MISSING, DAMAGED)  # what a sync uploads (if verified)


def archive_path(row: Backup, backup_root: Path) -> Path:
    return backup_root / row.path


def is_local(row: Backup, backup_root: Path) -> bool:
    """The local copy exists: not rotated away, and the archive is on this machine's disk."""
    return row.status != LOCAL_DELETED and archive_path(row, backup_root).exists()


def is_offsite(row: Backup) -> bool:
    return row.offsite_status == UPLOADED


def location(row: Backup, backup_root: Path) -> str:
    """Where a backup can be restored from: local, offsite, both, or none."""
    local, remote = is_local(row, backup_root), is_offsite(row)
    if local and remote:
        return "both"
    return "local" if local else "offsite" if remote else "none"


def remote_only(row: Backup, backup_root: Path) -> bool:
    """Known from its off-site copy alone (e.g. after `catalog rebuild --from offsite`)."""
    return is_offsite(row) and not archive_path(row, backup_root).exists()


def to_upload(catalog: Catalog, backup_root: Path) -> list[Backup]:
    """Verified local backups whose good off-site copy is missing, oldest first.

    A damaged remote copy whose local copy is gone cannot be repaired: it stays marked (list,
    health) instead of failing every sync.
    """
    rows = catalog.list(statuses=(VERIFIED,))
    return sorted(
        (r for r in rows if r.offsite_status in RETRYABLE and is_local(r, backup_root)),
        key=lambda r: (r.created_at, r.id),
    )


def uploaded(catalog: Catalog) -> list[Backup]:
    return [r for r in catalog.list() if r.offsite_status == UPLOADED]


# --- Parts of a multipart upload in progress -------------------------------------------------


@dataclass(frozen=True)
class DonePart:
    number: int
    size: int
    etag: str
    checksum: str  # base64 SHA-256, as S3 reports it


def record_part(catalog: Catalog, backup_id: str, upload_id: str, part: DonePart) -> None:
    with catalog.session() as s:
        s.add(
            OffsitePart(
                backup_id=backup_id,
                upload_id=upload_id,
                part_number=part.number,
                size=part.size,
                etag=part.etag,
                checksum=part.checksum,
                uploaded_at=utcnow(),
            )
        )


def recorded_parts(catalog: Catalog, upload_id: str) -> dict[int, DonePart]:
    """Parts recorded for an upload; a part recorded twice keeps its latest record."""
    query = select(OffsitePart).where(OffsitePart.upload_id == upload_id).order_by(OffsitePart.id)
    with catalog.session() as s:
        return {
            p.part_number: DonePart(p.part_number, p.size, p.etag, p.checksum)
            for p in s.scalars(query)
        }


def forget_parts(catalog: Catalog, backup_id: str) -> None:
    with catalog.session() as s:
        s.execute(delete(OffsitePart).where(OffsitePart.backup_id == backup_id))


def mark(catalog: Catalog, backup_id: str, status: str, **fields: object) -> None:
    """Set the off-site status (and other offsite_* fields); never touches the local status."""
    catalog.update(backup_id, offsite_status=status, **fields)


def checked_before(row: Backup) -> datetime:
    """Sort key: rows never content-checked first, then the longest unchecked."""
    return row.offsite_checked_at or datetime.min.replace(tzinfo=row.created_at.tzinfo)
