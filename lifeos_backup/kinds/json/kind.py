"""The `json` backup kind: the app's JSON files as one tar archive (lifeos_backup.kinds.json)."""

from __future__ import annotations

from pathlib import Path

from lifeos_backup.core.progress import ProgressFn
from lifeos_backup.core.settings import Settings
from lifeos_backup.formats.manifest import Manifest
from lifeos_backup.formats.streams import EXTENSIONS
from lifeos_backup.kinds.base import Written


class JsonKind:
    name = "json"

    def extension(self, settings: Settings) -> str:
        sealed = ".age" if settings.encryption_recipients else ""
        return ".tar" + EXTENSIONS[settings.compression] + sealed

    def write(self, settings: Settings, archive: Path, progress: ProgressFn) -> Written:
        from lifeos_backup.formats.crypto import encryption_info, parse_recipients
        from lifeos_backup.kinds.json.backup import write_archive

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
        from lifeos_backup.kinds.json.restore import check_archive

        check_archive(archive, manifest, progress)
