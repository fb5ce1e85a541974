"""What dead jobs leave behind, and the only rules by which anything of a backup is removed early.

Two cleaners share these rules:

* `clean_leftovers(kind)` runs before each new backup of a kind (its caller holds the kind's lock);
* `sweep()` runs when a worker starts and with every health check, over every kind.

Both act on one backup at a time and only while holding that backup's lease
(lifeos_backup.jobs.leases): a lease they can take proves that no live process writes, verifies or
cleans that backup, so a backup in progress (its verify included) is never touched, and a dead
one never waits for a timeout. With the lease held:

* a `running` backup has lost its creator: it becomes `failed` with the reason, and its partial
  and manifest-less files are removed;
* a `created` backup whose verify task ended without marking it (it failed, e.g. on a full disk),
  or is nowhere (not queued, not held by a worker, not running) for longer than `CREATED_GRACE`,
  has lost its chain: it becomes `failed` with the reason (its archive was never verified, so it
  is no backup to rely on; rotation removes it later);
* hidden `.partial` files of any backup are removed (a writer that dies leaves them);
* an archive without a manifest is removed only when the catalog calls the backup `running`
  (dead), `failed` or `deleted`, or does not know it: a complete backup (archive and manifest)
  is never removed here, and an `incomplete` one (listed by a catalog rebuild) is kept.

The scratch clusters of point-in-time recovery drills are swept here too: a drill killed
mid-way leaves a running PostgreSQL server and its data directory (kinds/basebackup/drill.py).

Backups written on another host live on that host's disk: its own sweeper handles them, unless
the repository is shared (LIFEOS_SHARED_REPOSITORY). A `running` backup of another host still
`running` after the task time limit has passed is failed from anywhere: its host is gone.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from lifeos_backup.core.errors import NotFound
from lifeos_backup.core.fsutil import PARTIAL_SUFFIX, remove_quietly
from lifeos_backup.core.names import LAYOUTS, layout, split_file_name
from lifeos_backup.core.settings import Settings
from lifeos_backup.formats.manifest import MANIFEST_SUFFIX
from lifeos_backup.jobs.leases import try_lease
from lifeos_backup.storage.catalog import Backup, Catalog
from lifeos_backup.storage.catalog.store import CREATED, DELETED, FAILED, RUNNING, utcnow
from lifeos_backup.storage.repository import kind_dir

log = logging.getLogger(__name__)

CREATED_GRACE = timedelta(minutes=2)  # a chain's next message is sent just after create returns
INTERRUPTED = "interrupted: its worker stopped before it finished"
CHAIN_LOST = (
    "its verify step did not run to the end and no message of it is left (lost with a Redis "
    "that restarted without its data, or failed unexpectedly); the archive was not verified"
)
# Statuses whose manifest-less archive is a leftover (None: the catalog does not know it).
_LEFTOVER_STATUSES = (None, RUNNING, FAILED, DELETED)

Pending = Callable[[str], bool]  # task id -> is a message of it queued, held or running?
Ended = Callable[[str], bool]  # task id -> did it end (a final state in the result backend)?


@dataclass(frozen=True)
class Swept:
    """One backup a cleaner acted on: what it found and what it removed."""

    backup_id: str
    status: str | None  # catalog status found (None: unknown to the catalog)
    failed: str | None  # the reason, when it was marked failed now
    removed: tuple[str, ...]


def files_by_backup(folder: Path) -> dict[str, list[Path]]:
    """The files of a kind folder grouped by the backup id in their names."""
    grouped: dict[str, list[Path]] = {}
    if folder.is_dir():
        for path in folder.iterdir():
            split = split_file_name(path.name)
            if split is not None:
                grouped.setdefault(split[0], []).append(path)
    return grouped


def _removable(path: Path, backup_id: str, kind: str, status: str | None) -> bool:
    name = path.name
    if name.startswith(".") and name.endswith(PARTIAL_SUFFIX):
        return True
    if name.endswith(MANIFEST_SUFFIX) or status not in _LEFTOVER_STATUSES:
        return False
    is_archive = name[len(backup_id) :] in layout(kind).suffixes
    manifest = path.with_name(backup_id + MANIFEST_SUFFIX)
    return is_archive and not manifest.exists()


def _ours(row: Backup | None, settings: Settings) -> bool:
    """Whether this host may judge the backup's files (its own, or a shared repository)."""
    return row is None or settings.shared_repository or row.host in ("", socket.gethostname())


def _get(catalog: Catalog, backup_id: str) -> Backup | None:
    try:
        return catalog.get(backup_id)
    except NotFound:
        return None


def _resolve(
    backup_id: str,
    kind: str,
    files: list[Path],
    settings: Settings,
    catalog: Catalog,
    pending: Pending | None,
    now: datetime,
    ended: Ended | None = None,
) -> Swept | None:
    """Judge one backup; call only while holding its lease."""
    row = _get(catalog, backup_id)
    if not _ours(row, settings):
        return None
    status = row.status if row else None
    failed: str | None = None
    if row is not None and row.status == RUNNING:
        failed = INTERRUPTED
    elif row is not None and row.status == CREATED and pending is not None:
        task = row.task_id or ""
        waiting = bool(task) and pending(task)
        over = bool(task) and ended is not None and ended(task)  # e.g. failed on a full disk
        if not waiting and (over or now - (row.finished_at or row.created_at) > CREATED_GRACE):
            failed = CHAIN_LOST
    if failed is not None:
        catalog.update(backup_id, status=FAILED, error=failed, finished_at=row.finished_at or now)  # type: ignore[union-attr]
    removed = [p for p in files if _removable(p, backup_id, kind, FAILED if failed else status)]
    remove_quietly(*removed)
    if failed is None and not removed:
        return None
    swept = Swept(backup_id, status, failed, tuple(sorted(p.name for p in removed)))
    log.warning("cleaned up %s (%s): %s", backup_id, status or "unknown", swept)
    return swept


def _cleanup(
    kinds: Iterable[str],
    settings: Settings,
    catalog: Catalog,
    owner: str,
    pending: Pending | None,
    now: datetime | None = None,
    ended: Ended | None = None,
) -> list[Swept]:
    now = now or utcnow()
    swept: list[Swept] = []
    for kind in kinds:
        grouped = files_by_backup(kind_dir(settings.backup_root, kind))
        statuses = (RUNNING, CREATED) if pending is not None else (RUNNING,)
        for row in catalog.list(kind=kind, statuses=statuses):
            grouped.setdefault(row.id, [])
        for backup_id, files in sorted(grouped.items()):
            with try_lease(settings.backup_root, backup_id, owner, "clean-up") as free:
                if free:
                    found = _resolve(
                        backup_id, kind, files, settings, catalog, pending, now, ended
                    )
                    if found is not None:
                        swept.append(found)
    swept += _fail_abandoned_elsewhere(settings, catalog, now)
    return swept


def _fail_abandoned_elsewhere(settings: Settings, catalog: Catalog, now: datetime) -> list[Swept]:
    """`running` backups of other hosts older than the task time limit: their host is gone."""
    limit = timedelta(seconds=settings.task_time_limit + settings.lock_ttl)
    swept = []
    for row in catalog.list(statuses=(RUNNING,)):
        if _ours(row, settings) or now - row.created_at <= limit:
            continue
        reason = f"{INTERRUPTED} (host {row.host} did not finish it within the time limit)"
        catalog.update(row.id, status=FAILED, error=reason, finished_at=now)
        swept.append(Swept(row.id, RUNNING, reason, ()))
    return swept


def clean_leftovers(kind: str, settings: Settings, catalog: Catalog, owner: str) -> list[Swept]:
    """Before a new backup of `kind` (caller holds the kind's lock): dead runs and their files."""
    return _cleanup([kind], settings, catalog, owner, pending=None)


def sweep(
    settings: Settings,
    catalog: Catalog,
    pending: Pending | None,
    now: datetime | None = None,
    ended: Ended | None = None,
) -> list[Swept]:
    """Resolve every backup of every kind whose task is gone, and remove what it left; then
    stop and delete the scratch clusters of killed point-in-time recovery drills."""
    owner = f"sweeper-{os.getpid()}"
    swept = _cleanup(sorted(LAYOUTS), settings, catalog, owner, pending, now, ended)
    sweep_drill_clusters(settings)
    return swept


def sweep_drill_clusters(settings: Settings) -> list[str]:
    """Scratch clusters of PITR drills whose process is gone: server stopped, folder deleted."""
    from lifeos_backup.kinds.basebackup.drill import remove_abandoned

    try:
        removed = remove_abandoned(settings)
    except OSError as exc:
        log.warning("could not sweep the scratch clusters of PITR drills: %s", exc)
        return []
    if removed:
        log.warning("removed the scratch clusters of interrupted PITR drills: %s", removed)
    return removed
