"""The off-site side of the catalog: each backup's copy per target, statuses, where a backup
is, and recorded upload parts.

The truth is one `offsite_copies` row per backup and target. Every change goes through `mark` or
`set_copy`, which then summarise the copies into the backup's own offsite_* columns: status
`uploaded` when any target holds a good copy (else the most pressing other state), the key and
checksum of that copy, the errors prefixed with their target's name when there are several.
Readers that only ask "is it off-site, and is anything wrong" (list's location, forget, the
local rebuild) keep reading those columns; per-target readers (upload, sync, restore --from
TARGET, health, status) read the copies.

No SDK here: `lifeos-backup list` and the shared lifecycle read these without network code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import delete, select

from lifeos_backup.core.targets import LEGACY_NAME
from lifeos_backup.storage.catalog import Backup, Catalog
from lifeos_backup.storage.catalog.models import OffsiteCopy, OffsitePart
from lifeos_backup.storage.catalog.store import VERIFIED, utcnow
from lifeos_backup.storage.offsite.places import (  # noqa: F401  (importers find them here too)
    DAMAGED,
    DELETED,
    DELETING,
    FAILED,
    MISSING,
    RETRYABLE,
    UPLOADED,
    UPLOADING,
    archive_path,
    is_local,
    is_offsite,
    location,
    remote_only,
)


def to_upload(
    catalog: Catalog, backup_root: Path, targets: list[str] | None = None
) -> list[Backup]:
    """Verified local backups whose good copy is missing on some target, oldest first.

    `targets`: the configured targets' names (None: only the summary counts, as with one target).
    A damaged remote copy whose local copy is gone is repaired from another target by the sync
    (`repair`), not here: it stays marked (list, health) instead of failing every sync.
    """
    rows = catalog.list(statuses=(VERIFIED,))
    held = copies_by_backup(catalog)
    return sorted(
        (
            r
            for r in rows
            if is_local(r, backup_root)
            and (
                r.offsite_status in RETRYABLE
                if targets is None
                else any(status_on(held, r.id, t) in RETRYABLE for t in targets)
            )
        ),
        key=lambda r: (r.created_at, r.id),
    )


def uploaded(catalog: Catalog, target: str | None = None) -> list[Backup]:
    """Backups with a good copy (on `target`, or anywhere)."""
    if target is None:
        return [r for r in catalog.list() if r.offsite_status == UPLOADED]
    held = copies_by_backup(catalog)
    return [r for r in catalog.list() if status_on(held, r.id, target) == UPLOADED]


# --- Copies per target ----------------------------------------------------------------------------

_FIELDS = (
    *("status", "key", "checksum", "uploaded_at"),
    *("checked_at", "error", "attempts", "upload_id"),
)
# Which state of a copy the summary shows when none is good: the most pressing first.
_PRESSING = (DELETING, UPLOADING, DAMAGED, MISSING, FAILED, DELETED, None)


def copies(catalog: Catalog, backup_id: str) -> dict[str, OffsiteCopy]:
    """The backup's copies by target name."""
    query = select(OffsiteCopy).where(OffsiteCopy.backup_id == backup_id).order_by(OffsiteCopy.id)
    with catalog.session() as s:
        return {c.target: c for c in s.scalars(query)}


def copies_by_backup(catalog: Catalog) -> dict[str, dict[str, OffsiteCopy]]:
    """Every copy: backup id -> target -> copy."""
    out: dict[str, dict[str, OffsiteCopy]] = {}
    with catalog.session() as s:
        for c in s.scalars(select(OffsiteCopy).order_by(OffsiteCopy.id)):
            out.setdefault(c.backup_id, {})[c.target] = c
    return out


def status_on(held: dict[str, dict[str, OffsiteCopy]], backup_id: str, target: str) -> str | None:
    found = held.get(backup_id, {}).get(target)
    return found.status if found is not None else None


def copy_on(catalog: Catalog, backup_id: str, target: str) -> OffsiteCopy:
    """The backup's copy on `target` (an empty one when it was never tried)."""
    found = copies(catalog, backup_id).get(target)
    return found if found is not None else OffsiteCopy(backup_id=backup_id, target=target)


def set_copy(catalog: Catalog, backup_id: str, target: str, **fields: object) -> None:
    """Change the copy on `target` (fields by column name, `offsite_` prefix allowed), then the
    backup's summary."""
    values = {k.removeprefix("offsite_"): v for k, v in fields.items()}
    unknown = set(values) - set(_FIELDS)
    if unknown:
        raise TypeError(f"not an off-site copy field: {sorted(unknown)}")
    with catalog.session() as s:
        row = s.scalars(
            select(OffsiteCopy).where(
                OffsiteCopy.backup_id == backup_id, OffsiteCopy.target == target
            )
        ).first()
        if row is None:
            row = OffsiteCopy(backup_id=backup_id, target=target)
            s.add(row)
        for key, value in values.items():
            setattr(row, key, value)
        row.updated_at = utcnow()
    summarise(catalog, backup_id)


def summarise(catalog: Catalog, backup_id: str) -> None:
    """The backup's offsite_* columns from its copies (see the module's docstring)."""
    held = list(copies(catalog, backup_id).values())
    if not held:
        return
    good = [c for c in held if c.status == UPLOADED]
    if good:
        main = good[0]
    else:
        main = min(held, key=lambda c: _PRESSING.index(c.status) if c.status in _PRESSING else 99)
    errors = [c for c in held if c.error]
    if len(held) == 1:
        error = held[0].error
    else:
        error = "; ".join(f"{c.target}: {c.error}" for c in errors) or None
    catalog.update(
        backup_id,
        offsite_status=main.status,
        offsite_key=main.key or next((c.key for c in held if c.key), None),
        offsite_checksum=main.checksum,
        offsite_uploaded_at=main.uploaded_at,
        offsite_checked_at=main.checked_at,
        offsite_error=error,
        offsite_attempts=max((c.attempts or 0) for c in held) or None,
        offsite_upload_id=next((c.upload_id for c in held if c.upload_id), None),
    )


# --- Parts of a multipart upload in progress -------------------------------------------------


@dataclass(frozen=True)
class DonePart:
    number: int
    size: int
    etag: str
    checksum: str  # base64 SHA-256, as S3 reports it


def record_part(
    catalog: Catalog, backup_id: str, upload_id: str, part: DonePart, target: str = LEGACY_NAME
) -> None:
    with catalog.session() as s:
        s.add(
            OffsitePart(
                backup_id=backup_id,
                target=target,
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


def forget_parts(catalog: Catalog, backup_id: str, target: str | None = None) -> None:
    """Drop the recorded parts of the backup's uploads (to `target`, or to every target)."""
    query = delete(OffsitePart).where(OffsitePart.backup_id == backup_id)
    if target == LEGACY_NAME:
        query = query.where((OffsitePart.target == target) | (OffsitePart.target.is_(None)))
    elif target is not None:
        query = query.where(OffsitePart.target == target)
    with catalog.session() as s:
        s.execute(query)


def mark(
    catalog: Catalog, backup_id: str, status: str, target: str = LEGACY_NAME, **fields: object
) -> None:
    """Set the copy's status on `target` (and other fields); never touches the local status."""
    set_copy(catalog, backup_id, target, status=status, **fields)


def checked_before(row: OffsiteCopy | Backup) -> datetime:
    """Sort key: copies never content-checked first, then the longest unchecked."""
    checked = row.checked_at if isinstance(row, OffsiteCopy) else row.offsite_checked_at
    return checked or datetime.min.replace(tzinfo=UTC)


def behind(catalog: Catalog, backup_root: Path, targets: list[str]) -> list[dict[str, object]]:
    """Per target: how many verified local backups it lacks a good copy of, since when (the
    oldest of them was verified), and its latest error: "azure-weu 2 backups behind since T"."""
    rows = [r for r in catalog.list(statuses=(VERIFIED,)) if is_local(r, backup_root)]
    held = copies_by_backup(catalog)
    out: list[dict[str, object]] = []
    for target in targets:
        missing = [r for r in rows if status_on(held, r.id, target) != UPLOADED]
        oldest = min(missing, key=lambda r: r.verified_at or r.created_at, default=None)
        errors = [
            c for r in missing if (c := held.get(r.id, {}).get(target)) is not None and c.error
        ]
        latest = max(
            errors, key=lambda c: c.updated_at or datetime.min.replace(tzinfo=UTC), default=None
        )
        since = (oldest.verified_at or oldest.created_at) if oldest is not None else None
        out.append(
            {
                "name": target,
                "behind": len(missing),
                "since": since.isoformat() if since else None,
                "error": latest.error if latest is not None else None,
            }
        )
    return out


def describe_behind(entry: dict[str, object]) -> str:
    """One line: `azure-weu 2 backups behind since 2026-12-07T02:00:00+00:00`."""
    count = entry["behind"]
    return (
        f"{entry['name']} {count} backup{'s' if count != 1 else ''} behind since {entry['since']}"
    )
