"""Where a restore reads a backup from: the local repository, or a fresh download (`--from`).

Every `restore <kind>` command uses this, so `--from offsite` works the same for every kind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from lifeos_backup.core.progress import ProgressFn, ignore

if TYPE_CHECKING:
    from lifeos_backup.core.settings import Settings
    from lifeos_backup.formats.manifest import Manifest
    from lifeos_backup.storage.catalog import Catalog

SOURCES = ("local", "offsite")
FROM_HELP = "Read the backup from `local` disk or download it from `offsite` storage."


@contextlib.contextmanager
def backup_source(
    backup_id: str,
    settings: Settings,
    catalog: Catalog,
    source: str = "local",
    progress: ProgressFn = ignore,
) -> Iterator[tuple[Path, Manifest]]:
    """(archive, manifest) of a backup; off-site ones are downloaded, checked, removed after."""
    if source == "local":
        from lifeos_backup.formats.manifest import read_manifest
        from lifeos_backup.jobs.backups import locate, require_local_files

        row, archive, mpath = locate(settings, catalog, backup_id)
        require_local_files(settings, row, archive, mpath)
        yield archive, read_manifest(mpath)
    else:  # `offsite` (the first healthy target holding it) or a target's name
        from lifeos_backup.storage.offsite.download import fetched

        with fetched(backup_id, settings, catalog, progress, source) as found:
            yield found
