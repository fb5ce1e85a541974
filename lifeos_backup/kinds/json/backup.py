"""JSON backups: the app's data/, presets/ and configs/ folders as one compressed tar.

One read of every source file feeds the tar stream, its per-file SHA-256 and the compressor; the
archive's own SHA-256 is taken from the bytes as they go to disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from lifeos_backup.core.errors import ConfigError, SourceUnavailable
from lifeos_backup.core.fsutil import atomic_writer
from lifeos_backup.core.progress import Progress, ProgressFn
from lifeos_backup.formats.crypto import Recipient, sealed
from lifeos_backup.formats.manifest import FileEntry, Source
from lifeos_backup.formats.streams import CHUNK, HashingWriter, compressor
from lifeos_backup.formats.tarstream import Member, TarWriter

log = logging.getLogger(__name__)

SMALL_FILE = 4 << 20  # read in one call below this size; stream in chunks above it


@dataclass(slots=True)
class _Entry:
    """What the scan keeps of one source entry (not the whole stat: 50,000 of them add up)."""

    rel: str
    path: str
    st_mode: int
    mtime: int

    @classmethod
    def of(cls, rel: str, path: str, st: os.stat_result) -> _Entry:
        return cls(rel, path, st.st_mode, int(st.st_mtime))


@dataclass
class ArchiveResult:
    size: int
    sha256: str
    files: list[FileEntry]
    sources: list[Source]
    skipped: list[str]


def _scan(app_dir: Path, names: list[str]) -> tuple[list[_Entry], list[Source], list[str]]:
    """Stat the source tree once, sorted, so progress has totals and the archive is reproducible."""
    entries: list[_Entry] = []
    sources: list[Source] = []
    skipped: list[str] = []
    for name in names:
        top = app_dir / name
        if not top.is_dir():
            sources.append(Source(name=name, path=str(top), present=False))
            continue
        source = Source(name=name, path=str(top.resolve()))
        stack = [(str(top), name)]
        entries.append(_Entry.of(name, str(top), os.lstat(top)))
        while stack:
            folder, rel_folder = stack.pop()
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda e: e.name)
            subdirs = []
            for child in children:
                rel = f"{rel_folder}/{child.name}"
                st = child.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    entries.append(_Entry.of(rel, child.path, st))
                    subdirs.append((child.path, rel))
                elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                    entries.append(_Entry.of(rel, child.path, st))
                    if stat.S_ISREG(st.st_mode):
                        source.files += 1
                        source.bytes += st.st_size
                else:
                    skipped.append(rel)
                    log.warning("skipping %s: not a regular file, folder or symlink", rel)
            stack.extend(reversed(subdirs))
        sources.append(source)
    if not any(s.present for s in sources):
        raise ConfigError(
            f"nothing to back up in {app_dir}",
            f"none of {', '.join(names)} exists there",
            "set LIFEOS_APP_DIR to the Life-OS app folder",
        )
    return entries, sources, skipped


def _read_chunks(fd: int, size: int) -> Iterator[bytes]:
    """Up to `size` bytes of `fd`; a file that shrank since it was stat'ed yields fewer."""
    left = size
    while left:
        data = os.read(fd, min(CHUNK, left))
        if not data:
            break
        left -= len(data)
        yield data


def write_archive(
    app_dir: Path,
    names: list[str],
    archive: Path,
    algorithm: str,
    level: int,
    progress: ProgressFn,
    recipients: Sequence[Recipient] = (),
) -> ArchiveResult:
    """Write the tar of `names` under `app_dir` to `archive` atomically; return what went in.

    With `recipients` the compressed stream is encrypted (age) before it is hashed and written.
    """
    entries, sources, skipped = _scan(app_dir, names)
    report = Progress(
        "archiving",
        files_total=sum(s.files for s in sources),
        bytes_total=sum(s.bytes for s in sources),
    )
    progress(report)
    files: list[FileEntry] = []
    with atomic_writer(archive) as raw:
        hashed = HashingWriter(raw)
        secret = sealed(hashed, recipients)  # `hashed` itself when encryption is off
        packed = compressor(secret, algorithm, level)
        tar = TarWriter(packed)
        for entry in entries:
            mode, mtime = stat.S_IMODE(entry.st_mode), entry.mtime
            if stat.S_ISDIR(entry.st_mode):
                tar.add(Member(entry.rel, "dir", mode, mtime=mtime))
                files.append(FileEntry(path=entry.rel, type="dir", mode=mode))
                continue
            if stat.S_ISLNK(entry.st_mode):
                target = os.readlink(entry.path)
                tar.add(Member(entry.rel, "symlink", mode, mtime=mtime, linkname=target))
                files.append(FileEntry(path=entry.rel, type="symlink", mode=mode, linkname=target))
                continue
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                log.warning("%s vanished during the backup; not included", entry.rel)
                skipped.append(entry.rel)
                continue
            except OSError as exc:
                detail = exc.strerror or str(exc)
                raise SourceUnavailable(f"cannot read {entry.rel}", detail) from exc
            try:
                size = os.fstat(fd).st_size
                digest = hashlib.sha256()
                if size <= SMALL_FILE:
                    data = b"".join(_read_chunks(fd, size))
                    digest.update(data)
                    tar.add(Member(entry.rel, "file", mode, len(data), mtime), data)
                    size = len(data)
                else:

                    def chunks(fd: int = fd, size: int = size, digest=digest) -> Iterator[bytes]:
                        for chunk in _read_chunks(fd, size):
                            digest.update(chunk)
                            yield chunk

                    tar.add_stream(Member(entry.rel, "file", mode, size, mtime), chunks())
            finally:
                os.close(fd)
            files.append(FileEntry(path=entry.rel, mode=mode, size=size, sha256=digest.hexdigest()))
            report.files_done += 1
            report.bytes_done += size
            progress(report)
        tar.close()
        packed.close()
        if secret is not hashed:
            secret.close()  # seals the final chunk
        hashed.flush()
    return ArchiveResult(hashed.size, hashed.hexdigest(), files, sources, skipped)
