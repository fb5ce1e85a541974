"""What differs between kinds of backup: how the archive is written and how its content is checked.

A kind implements `Kind`; its writer returns `Written`, which the shared lifecycle
(lifeos_backup.jobs.backups) turns into the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lifeos_backup.core.progress import ProgressFn
from lifeos_backup.core.settings import Settings
from lifeos_backup.formats.manifest import Encryption, EntrySpool, FileEntry, Manifest, Source


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
