"""The manifest: a JSON document beside every archive that makes the backup self-describing.

It is written last (an archive without one is incomplete by definition), and it alone is enough to
rebuild the catalog after the catalog or the whole machine is lost.

Layout: one JSON document, written as lines so that no reader or writer holds its file list::

    {"format_version":1,"backup_id":...,"archive":{...},...,"files":[
    {"path":"data","type":"dir","size":0,"mode":493},
    {"path":"data/a.json","type":"file","size":12,"mode":420,"sha256":"..."}
    ]}

The first line holds every field but `files`; then one entry per line, in archive order; then
`]}`. Any JSON parser reads it whole; `read_manifest` parses only the first line and
`Manifest.iter_files` streams the entries. Manifests written before this layout (one compact
line) are read whole, as before.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from datetime import datetime
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any, BinaryIO, Literal

from pydantic import BaseModel, Field, PrivateAttr, TypeAdapter, ValidationError, model_validator

from lifeos_backup.core.errors import LifeosError, VerificationFailed
from lifeos_backup.core.fsutil import atomic_writer
from lifeos_backup.core.names import check_archive_name

FORMAT_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"
# A manifest sealed with age (lifeos_backup.formats.crypto.seal_file) where it leaves the machine.
SEALED_MANIFEST_SUFFIX = MANIFEST_SUFFIX + ".age"
_FILES_OPEN = b',"files":[\n'  # ends the first line of a line-layout manifest
_TAIL = b"]}\n"
_BATCH = 4096  # entries validated per call while streaming


class FileEntry(BaseModel):
    """One archive member as it was read from the source."""

    path: str
    type: Literal["file", "dir", "symlink"] = "file"
    size: int = 0
    mode: int
    sha256: str | None = None
    linkname: str | None = None
    # Added within format version 1 (absent in older manifests): seconds since the epoch.
    mtime: int | None = None


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
    # A manifest read from disk in the line layout streams its entries from there (`files` stays
    # empty); None when `files` holds them.
    _entries_path: Path | None = PrivateAttr(default=None)

    def entries_in(self, path: Path) -> None:
        """Stream the entries from the manifest file at `path` (this manifest, written there)."""
        self._entries_path = path

    def iter_files(self) -> Iterator[FileEntry]:
        """The entries in archive order, streamed from disk when the manifest was read from it."""
        if self._entries_path is None or self.files:
            return iter(self.files)
        return _stream_entries(self._entries_path)

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


class EntrySpool:
    """Manifest entries as a writer produces them, one JSON line each (`{...},`), in an unlinked
    temporary file in `folder` (the archive's, not a RAM-backed /tmp); gone on a crash."""

    def __init__(self, folder: Path) -> None:
        self._file = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115  (closed by close())
        self._write = self._file.write

    def add_file(
        self, path: str, mode: int, size: int, sha256: str, mtime: int | None = None
    ) -> None:
        self._write(
            b'{"path":%s,"type":"file","size":%d,"mode":%d,"sha256":"%s"%s},\n'
            % (encode_basestring(path).encode(), size, mode, sha256.encode(), _mtime(mtime))
        )

    def add_dir(self, path: str, mode: int, mtime: int | None = None) -> None:
        self._write(
            b'{"path":%s,"type":"dir","size":0,"mode":%d%s},\n'
            % (encode_basestring(path).encode(), mode, _mtime(mtime))
        )

    def add_symlink(
        self, path: str, mode: int, linkname: str, mtime: int | None = None
    ) -> None:
        self._write(
            b'{"path":%s,"type":"symlink","size":0,"mode":%d,"linkname":%s%s},\n'
            % (
                encode_basestring(path).encode(),
                mode,
                encode_basestring(linkname).encode(),
                _mtime(mtime),
            )
        )

    def copy_to(self, out: BinaryIO) -> None:
        """The entries as the manifest's lines: the last one without its comma."""
        self._file.flush()
        size = self._file.seek(0, os.SEEK_END)
        if size:
            _copy_range(self._file, 0, size - 2, out)
            out.write(b"\n")

    def __iter__(self) -> Iterator[FileEntry]:
        self._file.flush()
        self._file.seek(0)
        for batch in _batches(self._file, None):
            yield from batch

    def close(self) -> None:
        self._file.close()


_ENTRIES = TypeAdapter(list[FileEntry])


def _mtime(mtime: int | None) -> bytes:
    return b"" if mtime is None else b',"mtime":%d' % mtime


def _copy_range(src: BinaryIO, start: int, end: int, out: BinaryIO) -> None:
    src.seek(start)
    left = end - start
    while left > 0:
        data = src.read(min(left, 1 << 20))
        if not data:
            raise OSError(f"{getattr(src, 'name', 'file')} ended early")
        out.write(data)
        left -= len(data)


def _entry_line(entry: FileEntry) -> bytes:
    return entry.model_dump_json(exclude_none=True).encode()


def write_manifest(path: Path, manifest: Manifest, entries: EntrySpool | None = None) -> None:
    """Write the manifest atomically in the line layout, streaming its entries: from `entries`,
    else from the manifest (its list, or the file it was read from, which may be `path`)."""
    header = manifest.model_dump_json(exclude_none=True, exclude={"files"}).encode()
    with atomic_writer(path) as out:
        out.write(header[:-1] + _FILES_OPEN)
        source = manifest._entries_path
        if entries is not None:
            entries.copy_to(out)
        elif source is not None and not manifest.files:
            with open(source, "rb") as src:
                start = len(src.readline())
                _copy_range(src, start, src.seek(0, os.SEEK_END) - len(_TAIL), out)
        elif manifest.files:
            out.write(b",\n".join(_entry_line(e) for e in manifest.files) + b"\n")
        out.write(_TAIL)


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


def _unreadable(name: str, detail: str) -> VerificationFailed:
    return VerificationFailed(
        f"manifest {name} is unreadable", detail, "the backup cannot be trusted; use another one"
    )


def read_manifest(path: Path) -> Manifest:
    """Load and validate a manifest (FileNotFoundError when there is none).

    In the line layout only the first line is parsed and the end checked; the entries are
    validated as `iter_files` streams them.
    """
    with open(path, "rb") as handle:
        first = handle.readline()
        if not first.endswith(_FILES_OPEN):
            return parse_manifest(first + handle.read(), path.name)
        end = handle.seek(0, os.SEEK_END)
        handle.seek(max(end - len(_TAIL), len(first)))
        if handle.read() != _TAIL:
            raise _unreadable(path.name, "truncated: the file list does not end")
    manifest = parse_manifest(first[: -len(_FILES_OPEN)] + b"}", path.name)
    if manifest.files:
        raise _unreadable(path.name, "files: listed twice")
    manifest.entries_in(path)
    return manifest


def _batches(handle: BinaryIO, name: str | None) -> Iterator[list[FileEntry]]:
    """Validated entries from `handle`, positioned at the first entry line, up to `]}`."""
    lines: list[bytes] = []
    for line in handle:
        if line == _TAIL:
            if handle.read(1):
                raise _unreadable(name or "spool", "text after the file list")
            break
        lines.append(line)
        if len(lines) == _BATCH:
            yield _validate(lines, name)
            lines = []
    else:
        if name is not None:
            raise _unreadable(name, "truncated: the file list does not end")
    if lines:
        yield _validate(lines, name)


def _validate(lines: list[bytes], name: str | None) -> list[FileEntry]:
    body = b"".join(lines).rstrip(b",\n")
    try:
        return _ENTRIES.validate_json(b"[" + body + b"]")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        detail = f"files.{where}: {first['msg']}"
    raise _unreadable(name or "spool", detail)


def _stream_entries(path: Path) -> Iterator[FileEntry]:
    with open(path, "rb", buffering=1 << 20) as handle:
        handle.readline()
        for batch in _batches(handle, path.name):
            yield from batch


def require_archive_match(manifest: Manifest, name: str, size: int, sha256: str) -> None:
    """The check every reader ends with: the bytes it read are the bytes the manifest promises."""
    if size != manifest.archive.size or sha256 != manifest.archive.sha256:
        raise VerificationFailed(
            f"archive {name} does not match its manifest checksum",
            f"size {size} (manifest {manifest.archive.size}), sha256 {sha256[:16]}...",
            "the backup is not good; use another one",
        )
