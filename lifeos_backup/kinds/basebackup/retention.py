"""WAL retention tied to base backups: archived WAL older than every kept base backup goes.

A base backup needs the WAL from its start segment onwards (to become consistent, then to roll
forward to any later moment). So the cut-off is the start segment of the oldest base backup that
is still kept (created or verified), and only files whose segment position lies before it on
every timeline are removed; timeline history files are always kept (tiny, and recovery needs
them to follow timeline switches). Positions are compared without the timeline, as
`pg_archivecleanup` does, which errs towards keeping. With no kept base backup, or one whose
manifest cannot be read, nothing is removed: an archive is never pruned on a guess.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from lifeos_backup.core.errors import VerificationFailed
from lifeos_backup.core.settings import Settings
from lifeos_backup.formats.manifest import manifest_path, read_manifest
from lifeos_backup.kinds.basebackup import wal_archive_dir
from lifeos_backup.storage.catalog import Catalog
from lifeos_backup.storage.catalog.store import CREATED, VERIFIED
from lifeos_backup.wal.archive import SUFFIX, TEMP_PREFIX
from lifeos_backup.wal.names import ARCHIVABLE, is_history, segment_part

log = logging.getLogger(__name__)

KIND = "basebackup"
STALE_TEMP_SECONDS = 86_400  # a push's temporary file older than this belongs to a dead process


def wal_cutoff(settings: Settings, catalog: Catalog) -> str | None:
    """Start WAL file of the oldest kept base backup; None when pruning would be a guess."""
    starts: list[str] = []
    for row in catalog.list(kind=KIND, statuses=(CREATED, VERIFIED)):
        archive = settings.backup_root / row.path
        try:
            start = read_manifest(manifest_path(archive, row.id)).facts.get("start_wal_file")
        except (OSError, VerificationFailed):
            start = None
        if not start:
            log.warning("WAL retention skipped: base backup %s has no readable start", row.id)
            return None
        starts.append(str(start))
    return min(starts, key=segment_part) if starts else None


def prunable(names: list[str], cutoff: str) -> list[str]:
    """Which archived WAL names lie wholly before `cutoff` (history files never do)."""
    keep_from = segment_part(cutoff)
    return sorted(
        name
        for name in names
        if ARCHIVABLE.match(name) and not is_history(name) and segment_part(name) < keep_from
    )


def prune_wal(archive: Path, cutoff: str, *, dry_run: bool = False) -> list[str]:
    """Remove archived WAL before `cutoff` (and stale temporary files); returns the names."""
    if not archive.is_dir():
        return []
    names: list[str] = []
    now = time.time()
    for entry in os.scandir(archive):
        if entry.name.startswith(TEMP_PREFIX):
            if now - entry.stat().st_mtime > STALE_TEMP_SECONDS and not dry_run:
                Path(entry.path).unlink(missing_ok=True)
        elif entry.name.endswith(SUFFIX):
            names.append(entry.name.removesuffix(SUFFIX))
    doomed = prunable(names, cutoff)
    if not dry_run:
        for name in doomed:
            (archive / f"{name}{SUFFIX}").unlink(missing_ok=True)
    if doomed:
        log.info(
            "WAL retention %s %d files before %s (%s .. %s)",
            "would remove" if dry_run else "removed", len(doomed), cutoff, doomed[0], doomed[-1],
        )
    return doomed


def prune_after_rotation(settings: Settings, catalog: Catalog, dry_run: bool = False) -> list[str]:
    """The basebackup kind's rotation step: prune WAL no kept base backup needs."""
    cutoff = wal_cutoff(settings, catalog)
    if cutoff is None:
        return []
    return prune_wal(wal_archive_dir(settings), cutoff, dry_run=dry_run)
