"""What differs between kinds of backup: how the archive is written and how its content is checked.

Everything else (ids, catalog, manifest, locks, retention) is shared in lifeos_backup.backups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lifeos_backup.errors import ConfigError
from lifeos_backup.manifest import FileEntry, Manifest, Source
from lifeos_backup.progress import ProgressFn
from lifeos_backup.settings import Settings
from lifeos_backup.streams import EXTENSIONS


@dataclass
class Written:
    """What a kind's writer produced; the shared code turns it into the manifest."""

    size: int
    sha256: str
    algorithm: str
    level: int
    files: list[FileEntry] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


class Kind(Protocol):
    name: str

    def extension(self, settings: Settings) -> str: ...

    def write(self, settings: Settings, archive: Path, progress: ProgressFn) -> Written:
        """Write the archive at `archive` atomically (temporary name, fsync, rename)."""
        ...

    def check(self, archive: Path, manifest: Manifest, progress: ProgressFn) -> None:
        """Check the archive's content against the manifest; raise VerificationFailed."""
        ...


class JsonKind:
    name = "json"

    def extension(self, settings: Settings) -> str:
        return ".tar" + EXTENSIONS[settings.compression]

    def write(self, settings: Settings, archive: Path, progress: ProgressFn) -> Written:
        from lifeos_backup.json_backup import write_archive

        names = [n.strip() for n in settings.json_sources.split(",") if n.strip()]
        level = settings.effective_compression_level
        result = write_archive(
            settings.app_dir, names, archive, settings.compression, level, progress
        )
        return Written(
            size=result.size,
            sha256=result.sha256,
            algorithm=settings.compression,
            level=level,
            files=result.files,
            sources=result.sources,
            facts={"skipped": result.skipped} if result.skipped else {},
        )

    def check(self, archive: Path, manifest: Manifest, progress: ProgressFn) -> None:
        from lifeos_backup.json_restore import check_archive

        check_archive(archive, manifest, progress)


KINDS: dict[str, Kind] = {"json": JsonKind()}


def get_kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise ConfigError(
            f"unknown backup kind {name!r}", hint=f"use one of: {', '.join(sorted(KINDS))}"
        ) from None
