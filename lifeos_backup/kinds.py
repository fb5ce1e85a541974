"""What differs between kinds of backup: how the archive is written and how its content is checked.

Everything else (ids, catalog, manifest, locks, retention) is shared in lifeos_backup.backups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lifeos_backup.manifest import Encryption, EntrySpool, FileEntry, Manifest, Source
from lifeos_backup.names import layout
from lifeos_backup.postgres import PostgresKind
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
    entries: EntrySpool | None = None  # entries spooled to disk instead of `files` (JSON)
    sources: list[Source] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    encryption: Encryption | None = None  # set by writers that encrypted (crypto.encryption_info)


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
        sealed = ".age" if settings.encryption_recipients else ""
        return ".tar" + EXTENSIONS[settings.compression] + sealed

    def write(self, settings: Settings, archive: Path, progress: ProgressFn) -> Written:
        from lifeos_backup.crypto import encryption_info, parse_recipients
        from lifeos_backup.json_backup import write_archive

        names = [n.strip() for n in settings.json_sources.split(",") if n.strip()]
        level = settings.effective_compression_level
        recipients = parse_recipients(settings.encryption_recipients)
        result = write_archive(
            settings.app_dir, names, archive, settings.compression, level, progress, recipients
        )
        return Written(
            size=result.size,
            sha256=result.sha256,
            algorithm=settings.compression,
            level=level,
            entries=result.entries,
            sources=result.sources,
            facts={"skipped": result.skipped} if result.skipped else {},
            encryption=encryption_info(recipients),
        )

    def check(self, archive: Path, manifest: Manifest, progress: ProgressFn) -> None:
        from lifeos_backup.json_restore import check_archive

        check_archive(archive, manifest, progress)


class BaseBackupKind:
    """pg_basebackup for point-in-time recovery (lifeos_backup.pitr; docs/pitr.md)."""

    name = "basebackup"

    def extension(self, settings: Settings) -> str:
        return ".tar.zst" + (".age" if settings.encryption_recipients else "")

    def write(self, settings: Settings, archive: Path, progress: ProgressFn) -> Written:
        from lifeos_backup.pitr.basebackup import write_base_backup

        return write_base_backup(settings, archive, progress)

    def check(self, archive: Path, manifest: Manifest, progress: ProgressFn) -> None:
        from lifeos_backup.pitr.basebackup import check_base_backup

        check_base_backup(archive, manifest, progress)

    def check_without_key(self, archive: Path, manifest: Manifest, progress: ProgressFn) -> None:
        """Beyond the ciphertext (backups.verify_backup): the WAL the backup needs is archived.

        A base backup is restorable only with its start..stop segments, and that needs no key.
        """
        from lifeos_backup.pitr import wal_archive_dir
        from lifeos_backup.pitr.basebackup import check_wal_coverage
        from lifeos_backup.settings import get_settings

        check_wal_coverage(manifest.facts, wal_archive_dir(get_settings()))

    def after_rotate(self, settings: Settings, catalog: Any, dry_run: bool) -> list[str]:
        """Rotation hook (backups.rotate): prune archived WAL no kept base backup needs."""
        from lifeos_backup.pitr.retention import prune_after_rotation

        return prune_after_rotation(settings, catalog, dry_run)


KINDS: dict[str, Kind] = {
    "json": JsonKind(),
    "postgres": PostgresKind(),
    "basebackup": BaseBackupKind(),
}


def get_kind(name: str) -> Kind:
    """The kind called `name` (ConfigError naming the kinds for any other name)."""
    layout(name)  # the repository's kinds and their error for an unknown one
    return KINDS[name]
