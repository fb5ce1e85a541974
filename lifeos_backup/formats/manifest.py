"""The manifest: a JSON document beside every archive that makes the backup self-describing.

It is written last (an archive without one is incomplete by definition), and it alone is enough to
rebuild the catalog after the catalog or the whole machine is lost.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from lifeos_backup.core.errors import LifeosError, VerificationFailed
from lifeos_backup.core.fsutil import atomic_writer
from lifeos_backup.core.names import check_archive_name

FORMAT_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"


class FileEntry(BaseModel):
    """One archive member as it was read from the source."""

    path: str
    type: Literal["file", "dir", "symlink"] = "file"
    size: int = 0
    mode: int
    sha256: str | None = None
    linkname: str | None = None


class Source(BaseModel):
    name: str
    path: str
    present: bool = True
    files: int = 0
    bytes: int = 0


class Compression(BaseModel):
    algorithm: str
    level: int


class ArchiveInfo(BaseModel):
    name: str
    size: int
    sha256: str


class Encryption(BaseModel):
    """How the archive is encrypted (lifeos_backup.formats.crypto): scheme and recipients'
    fingerprints.

    Size and SHA-256 in `archive` are those of the encrypted bytes, the ones on disk and off-site.
    """

    scheme: str
    recipients: list[str] = Field(default_factory=list)


class Manifest(BaseModel):
    """Everything needed to verify, restore and re-catalog one backup."""

    format_version: int = FORMAT_VERSION
    backup_id: str
    kind: str
    created_at: datetime
    finished_at: datetime
    host: str
    tool_version: str
    reason: str = ""
    initiator: str = ""
    sources: list[Source] = Field(default_factory=list)
    compression: Compression
    archive: ArchiveInfo
    files: list[FileEntry] = Field(default_factory=list)
    facts: dict[str, Any] = Field(default_factory=dict)
    verified_at: datetime | None = None
    # Added within format version 1 (absent in older manifests): both optional.
    encryption: Encryption | None = None
    # "content": every member checked; "ciphertext": encrypted, checked without the private key
    # (size, SHA-256, header) because the writing machines hold only public keys.
    verified_scope: Literal["content", "ciphertext"] | None = None

    @model_validator(mode="after")
    def _names_are_the_repository_s(self) -> Manifest:
        """Id, kind and archive name become paths: a manifest with any other is refused here,
        before any reader (restore, rebuild, off-site, drill) can use them."""
        try:
            check_archive_name(self.backup_id, self.kind, self.archive.name)
        except LifeosError as exc:  # InvalidName, or ConfigError for an unknown kind
            raise ValueError(str(exc)) from None
        return self


def manifest_path(archive: Path, backup_id: str) -> Path:
    return archive.with_name(backup_id + MANIFEST_SUFFIX)


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Compact JSON (one dump, no re-encoding): 50,000 entries stay fast to write and small."""
    with atomic_writer(path) as handle:
        handle.write(manifest.model_dump_json(exclude_none=True).encode() + b"\n")


def parse_manifest(data: bytes, name: str) -> Manifest:
    """Validate a manifest's bytes; a damaged or hostile one is a verification failure."""
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        detail = f"{where}: {first['msg']}" if where else str(first["msg"])
    except ValueError as exc:
        detail = str(exc).splitlines()[0]
    raise VerificationFailed(
        f"manifest {name} is unreadable", detail, "the backup cannot be trusted; use another one"
    )


def read_manifest(path: Path) -> Manifest:
    """Load and validate a manifest (FileNotFoundError when there is none)."""
    return parse_manifest(path.read_bytes(), path.name)


def require_archive_match(manifest: Manifest, name: str, size: int, sha256: str) -> None:
    """The check every reader ends with: the bytes it read are the bytes the manifest promises."""
    if size != manifest.archive.size or sha256 != manifest.archive.sha256:
        raise VerificationFailed(
            f"archive {name} does not match its manifest checksum",
            f"size {size} (manifest {manifest.archive.size}), sha256 {sha256[:16]}...",
            "the backup is not good; use another one",
        )
