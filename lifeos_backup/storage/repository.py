"""Where backups live on disk: one folder per kind under the backup root, names by UTC time.

Names follow the old scripts' layout (operators' habits): json/json_backup_YYYYMMDD_HHMMSS.tar.zst
and postgresql/full/postgres_full_YYYYMMDD_HHMMSS.<ext>, each with <id>.manifest.json beside it.
The naming rules themselves, and their checks, are in lifeos_backup.core.names.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from lifeos_backup.core.errors import NotFound
from lifeos_backup.core.names import LAYOUTS, KindLayout, kind_of_id, layout, new_backup_id
from lifeos_backup.formats.manifest import MANIFEST_SUFFIX, manifest_path
from lifeos_backup.storage.catalog.schema import DELETED, DELETING

if TYPE_CHECKING:
    from lifeos_backup.core.settings import Settings
    from lifeos_backup.storage.catalog.models import Backup
    from lifeos_backup.storage.catalog.view import BackupRow

__all__ = [
    "LAYOUTS",
    "KindLayout",
    "iter_manifests",
    "kind_dir",
    "kind_of_id",
    "layout",
    "locate",
    "new_backup_id",
]

# The store's ORM row, or the same row read by lifeos_backup.storage.catalog.view.
Record = TypeVar("Record", "Backup", "BackupRow", covariant=True)


class Lookup(Protocol[Record]):
    """What `locate` needs of a catalog: the store (Catalog) or the read-only view."""

    def get(self, backup_id: str) -> Record: ...


def kind_dir(root: Path, kind: str) -> Path:
    return root / layout(kind).folder


def iter_manifests(root: Path) -> Iterator[Path]:
    """Every manifest under the root; archives without one are incomplete and not listed."""
    for lay in LAYOUTS.values():
        folder = root / lay.folder
        if folder.is_dir():
            yield from sorted(folder.glob(f"{lay.prefix}*{MANIFEST_SUFFIX}"))


def locate(
    settings: Settings, catalog: Lookup[Record], backup_id: str
) -> tuple[Record, Path, Path]:
    """Catalog row, archive path and manifest path of a backup that still exists."""
    row = catalog.get(backup_id)
    if row.status == DELETED:
        raise NotFound(f"backup {backup_id} was deleted by rotation", hint="choose another one")
    if row.status == DELETING:
        raise NotFound(f"backup {backup_id} is being deleted", hint="choose another one")
    archive = settings.backup_root / row.path
    return row, archive, manifest_path(archive, backup_id)
