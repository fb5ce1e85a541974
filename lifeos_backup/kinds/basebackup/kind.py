"""The `basebackup` kind: pg_basebackup for point-in-time recovery (docs/pitr.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lifeos_backup.core.progress import ProgressFn
from lifeos_backup.core.settings import Settings
from lifeos_backup.formats.manifest import Manifest
from lifeos_backup.kinds.base import Written


class BaseBackupKind:
    """pg_basebackup for point-in-time recovery (lifeos_backup.kinds.basebackup; docs/pitr.md)."""

    name = "basebackup"

    def extension(self, settings: Settings) -> str:
        return ".tar.zst" + (".age" if settings.encryption_recipients else "")

    def write(self, settings: Settings, archive: Path, progress: ProgressFn) -> Written:
        from lifeos_backup.kinds.basebackup.backup import write_base_backup

        return write_base_backup(settings, archive, progress)

    def check(self, archive: Path, manifest: Manifest, progress: ProgressFn) -> None:
        from lifeos_backup.kinds.basebackup.backup import check_base_backup

        check_base_backup(archive, manifest, progress)

    def check_without_key(self, archive: Path, manifest: Manifest, progress: ProgressFn) -> None:
        """Beyond the ciphertext (backups.verify_backup): the WAL the backup needs is archived.

        A base backup is restorable only with its start..stop segments, and that needs no key.
        """
        from lifeos_backup.core.settings import get_settings
        from lifeos_backup.kinds.basebackup import wal_archive_dir
        from lifeos_backup.kinds.basebackup.backup import check_wal_coverage

        check_wal_coverage(manifest.facts, wal_archive_dir(get_settings()))

    def after_rotate(self, settings: Settings, catalog: Any, dry_run: bool) -> list[str]:
        """Rotation hook (backups.rotate): prune archived WAL no kept base backup needs."""
        from lifeos_backup.kinds.basebackup.retention import prune_after_rotation

        return prune_after_rotation(settings, catalog, dry_run)
