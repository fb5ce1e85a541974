"""`lifeos-backup forget ID...`: delete chosen backups, locally and off-site, on purpose.

`plan_forget` decides (no change): every id must name a backup that still has a copy somewhere,
and without `force` two kinds of backup are refused, naming which and why:

* the newest verified backup of its kind: forgetting it would leave an older one, or none, as
  the backup to restore (rotation's own guard, lifeos_backup.storage.retention);
* a verified base backup that point-in-time recovery still starts from because a newer base
  backup is kept but not verified yet: until that one is proven, recovery of any moment after
  the older one replays the archived WAL from its start, which WAL retention keeps only while a
  base backup at or before it is kept (lifeos_backup.kinds.basebackup.retention).

`forget_one` deletes one backup through lifeos_backup.jobs.deletion (the code rotation uses),
holding the backup's lease, so a running create, verify or clean-up of it is never raced.
"""

from __future__ import annotations

from dataclasses import dataclass

from lifeos_backup.core.errors import ConfigError, NotFound
from lifeos_backup.core.names import check_backup_id
from lifeos_backup.core.settings import Settings
from lifeos_backup.jobs.deletion import delete_backup, has_remote
from lifeos_backup.jobs.leases import lease
from lifeos_backup.storage.catalog import Backup, Catalog
from lifeos_backup.storage.catalog.store import CREATED, DELETED, RUNNING, UNVERIFIED, VERIFIED
from lifeos_backup.storage.offsite.state import is_local

BASEBACKUP = "basebackup"
PENDING = (RUNNING, CREATED, UNVERIFIED)  # kept base backups not proven yet


@dataclass(frozen=True)
class Doomed:
    """One backup `forget` removes, and where its copies are."""

    id: str
    kind: str
    status: str
    local: bool
    remote: bool
    size: int | None

    @property
    def where(self) -> str:
        return "both" if self.local and self.remote else "local" if self.local else "offsite"


class Refused(ConfigError):
    """forget would remove a backup that recovery still needs; `--force` removes it anyway."""


def why_needed(catalog: Catalog, row: Backup, leaving: set[str]) -> str | None:
    """Why recovery still needs `row` (None: it does not); `leaving` are the ids forgotten."""
    if row.status != VERIFIED:
        return None
    kind_rows = catalog.list(kind=row.kind)
    verified = [r for r in kind_rows if r.status == VERIFIED]
    if verified and verified[0].id == row.id:
        return f"it is the newest verified backup of its kind ({row.kind})"
    if row.kind != BASEBACKUP:
        return None
    for newer in kind_rows:  # newest first
        if newer.created_at <= row.created_at:
            break
        if newer.id in leaving or newer.status not in PENDING:
            continue
        proven_between = any(
            r.status == VERIFIED
            and r.id not in leaving
            and row.created_at < r.created_at < newer.created_at
            for r in verified
        )
        if not proven_between:
            return (
                f"point-in-time recovery after it starts from it: the newer base backup "
                f"{newer.id} is {newer.status}, not verified"
            )
    return None


def plan_forget(
    settings: Settings, catalog: Catalog, ids: list[str], *, force: bool
) -> list[Doomed]:
    """What forgetting `ids` removes; NotFound or Refused (one error naming all) otherwise."""
    rows: list[Backup] = []
    for backup_id in dict.fromkeys(ids):  # in the order given, each once
        row = catalog.get(check_backup_id(backup_id))
        if row.status == DELETED and not has_remote(row):
            raise NotFound(
                f"backup {backup_id} is already deleted",
                row.error or "",
                "see `lifeos-backup list`",
            )
        rows.append(row)
    leaving = {r.id for r in rows}
    if not force:
        refusals = [(r.id, why) for r in rows if (why := why_needed(catalog, r, leaving))]
        if refusals:
            raise Refused(
                f"refusing to forget {', '.join(i for i, _ in refusals)}",
                "; ".join(f"{i}: {why}" for i, why in refusals),
                "make and verify a newer backup first, or pass --force to delete it anyway",
            )
    return [
        Doomed(r.id, r.kind, r.status, is_local(r, settings.backup_root), has_remote(r), r.size)
        for r in rows
    ]


def forget_one(settings: Settings, catalog: Catalog, backup_id: str, owner: str) -> None:
    """Delete one planned backup everywhere, holding its lease (LeaseBusy when it is in use)."""
    with lease(settings.backup_root, backup_id, owner, "forget"):
        delete_backup(settings, catalog, backup_id, "forgotten", remote=True)
