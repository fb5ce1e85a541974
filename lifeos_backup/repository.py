"""Where backups live on disk: one folder per kind under the backup root, names by UTC time.

Names follow the old scripts' layout (operators' habits): json/json_backup_YYYYMMDD_HHMMSS.tar.zst
and postgresql/full/postgres_full_YYYYMMDD_HHMMSS.<ext>, each with <id>.manifest.json beside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lifeos_backup.errors import ConfigError
from lifeos_backup.manifest import MANIFEST_SUFFIX


@dataclass(frozen=True)
class KindLayout:
    folder: str
    prefix: str


LAYOUTS: dict[str, KindLayout] = {
    "json": KindLayout("json", "json_backup_"),
    "postgres": KindLayout("postgresql/full", "postgres_full_"),
    "basebackup": KindLayout("postgresql/base", "base_backup_"),
}


def layout(kind: str) -> KindLayout:
    try:
        return LAYOUTS[kind]
    except KeyError:
        raise ConfigError(
            f"unknown backup kind {kind!r}", hint=f"use one of: {', '.join(sorted(LAYOUTS))}"
        ) from None


def kind_dir(root: Path, kind: str) -> Path:
    return root / layout(kind).folder


def new_backup_id(kind: str, when: datetime) -> str:
    return layout(kind).prefix + when.astimezone(UTC).strftime("%Y%m%d_%H%M%S")


def kind_of_id(backup_id: str) -> str:
    for kind, lay in LAYOUTS.items():
        if backup_id.startswith(lay.prefix):
            return kind
    raise ConfigError(f"{backup_id!r} is not a backup id", hint="see `lifeos-backup list`")


def iter_manifests(root: Path) -> Iterator[Path]:
    """Every manifest under the root; archives without one are incomplete and not listed."""
    for lay in LAYOUTS.values():
        folder = root / lay.folder
        if folder.is_dir():
            yield from sorted(folder.glob(f"{lay.prefix}*{MANIFEST_SUFFIX}"))
