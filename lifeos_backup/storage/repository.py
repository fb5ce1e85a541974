"""Where backups live on disk: one folder per kind under the backup root, names by UTC time.

Names follow the old scripts' layout (operators' habits): json/json_backup_YYYYMMDD_HHMMSS.tar.zst
and postgresql/full/postgres_full_YYYYMMDD_HHMMSS.<ext>, each with <id>.manifest.json beside it.
The naming rules themselves, and their checks, are in lifeos_backup.core.names.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from lifeos_backup.core.names import LAYOUTS, KindLayout, kind_of_id, layout, new_backup_id
from lifeos_backup.formats.manifest import MANIFEST_SUFFIX

__all__ = [
    "LAYOUTS",
    "KindLayout",
    "iter_manifests",
    "kind_dir",
    "kind_of_id",
    "layout",
    "new_backup_id",
]


def kind_dir(root: Path, kind: str) -> Path:
    return root / layout(kind).folder


def iter_manifests(root: Path) -> Iterator[Path]:
    """Every manifest under the root; archives without one are incomplete and not listed."""
    for lay in LAYOUTS.values():
        folder = root / lay.folder
        if folder.is_dir():
            yield from sorted(folder.glob(f"{lay.prefix}*{MANIFEST_SUFFIX}"))
