"""Point-in-time recovery: base backups, WAL retention, archive health and `restore pitr`.

The WAL hot path (archive_command / restore_command) is `lifeos_backup.wal`, kept free of the
heavy imports used here. See docs/pitr.md.
"""

from __future__ import annotations

from pathlib import Path

from lifeos_backup.core.settings import Settings
from lifeos_backup.wal.archive import ARCHIVE_SUBDIR


def wal_archive_dir(settings: Settings) -> Path:
    """LIFEOS_WAL_ARCHIVE_DIR, else BACKUP_ROOT/postgresql/wal (what `lifeos-wal` resolves too)."""
    if settings.wal_archive_dir is not None:
        return settings.wal_archive_dir
    return settings.backup_root.joinpath(*ARCHIVE_SUBDIR)
