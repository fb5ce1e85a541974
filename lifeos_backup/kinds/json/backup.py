"""JSON backups: the app's data/, presets/ and configs/ folders as one compressed tar.

One read of every source file feeds the tar stream, its per-file SHA-256 and the compressor; the
archive's own SHA-256 is taken from the bytes as they go to disk.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lifeos_backup.core.errors import ConfigError, SourceUnavailable
from lifeos_backup.core.fsutil import atomic_writer
from lifeos_backup.core.progress import Progress, ProgressFn
from lifeos_backup.formats.crypto import Recipient, sealed
from lifeos_backup.formats.manifest import EntrySpool, Source
from lifeos_backup.formats.streams import CHUNK, HashingWriter, compressor
from lifeos_backup.formats.tarstream import Member, TarWriter

log = logging.getLogger(__name__)

SMALL_FILE = 4 << 20  # read in one call below this size; stream in chunks above it


@dataclass
class ArchiveResult:
    size: int
    sha256: str
    entries: EntrySpool  # the manifest's entries, in archive order; the caller closes it
    sources: list[Source]
    skipped: list[str]


_DIR, _LINK, _OTHER = 1, 2, 3  # kinds of folder entries besides regular files


def _tops(app_dir: Path, names: list[str]) -> list[Source]:
    """The sources, present or not; ConfigError when none is there."""
    sources = []
    for name in names:
        top = app_dir / name
        present = top.is_dir()
        sources.append(
            Source(name=name, path=str(top.resolve() if present else top), present=present)
        )
    if not any(s.present for s in sources):
        raise ConfigError(
            f"nothing to back up in {app_dir}",
            f"none of {', '.join(names)} exists there",
            "set LIFEOS_APP_DIR to the Life-OS app folder",
        )
    return sources


SORT_RUN = 65_536  # names sorted in memory at a time; a bigger folder is merged from runs on disk


def _listing(folder: str, spool_dir: Path) -> tuple[Iterator[str], dict[str, int]]:
    """A folder's names, sorted, and the kind of those that are not regular files.

    Names only (not os.DirEntry objects), and at most SORT_RUN of them in memory: a bigger folder
    is sorted in runs written to unlinked temporary files and merged, so a folder of a million
    files costs a few MB, not ~100 MB.
    """
    names: list[str] = []
    runs: list[BinaryIO] = []
    kinds: dict[str, int] = {}
    try:
        with os.scandir(folder) as it:
            for child in it:
                names.append(child.name)
                if child.is_dir(follow_symlinks=False):
                    kinds[child.name] = _DIR
                elif child.is_symlink():
                    kinds[child.name] = _LINK
                elif not child.is_file(follow_symlinks=False):
                    kinds[child.name] = _OTHER
                if len(names) == SORT_RUN:
                    runs.append(_sorted_run(names, spool_dir))
                    names = []
    except BaseException:
        for run in runs:
            run.close()
        raise
    names.sort()
    if not runs:
        return iter(names), kinds
    return _merged(runs, names), kinds


def _sorted_run(names: list[str], spool_dir: Path) -> BinaryIO:
    names.sort()
    run = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115  (closed by _merged)
    for name in names:  # a name holds neither "/" nor NUL; surrogates keep undecodable bytes
        run.write(name.encode("utf-8", "surrogateescape") + b"\0")
    run.seek(0)
    return run


def _merged(runs: list[BinaryIO], rest: list[str]) -> Iterator[str]:
    def read(run: BinaryIO) -> Iterator[str]:
        tail = b""
        while block := run.read(1 << 16):
            *whole, tail = (tail + block).split(b"\0")
            for name in whole:
                yield name.decode("utf-8", "surrogateescape")

    try:
        yield from heapq.merge(*(read(run) for run in runs), rest)
    finally:
        for run in runs:
            run.close()


def _walk(top: str, name: str, spool_dir: Path) -> Iterator[tuple[str, str, int]]:
    """(relative path, path, kind) of `top` and everything under it: each folder's entries sorted
    by name, then its subfolders' content, depth first. One folder is listed at a time (sorted
    through files in `spool_dir` when big), so memory does not grow with the file count; the
    archive is reproducible."""
    yield name, top, _DIR
    stack = [(top, name)]
    while stack:
        folder, rel_folder = stack.pop()
        try:
            names, kinds = _listing(folder, spool_dir)
        except FileNotFoundError:  # removed since its parent was listed
            log.warning("%s vanished during the backup; its content is not included", rel_folder)
            continue
        subdirs = []
        for child in names:
            kind = kinds.get(child, 0)
            path, rel = f"{folder}/{child}", f"{rel_folder}/{child}"
            if kind == _DIR:
                subdirs.append((path, rel))
            yield rel, path, kind
        stack.extend(reversed(subdirs))


def _count_files(app_dir: Path, sources: list[Source]) -> int:
    """Regular files to archive, for progress: one pass over the folders without a stat."""
    total = 0
    for source in sources:
        if not source.present:
            continue
        stack = [str(app_dir / source.name)]
        while stack:
            with os.scandir(stack.pop()) as it:
                for child in it:
                    if child.is_dir(follow_symlinks=False):
                        stack.append(child.path)
                    elif child.is_file(follow_symlinks=False):
                        total += 1
    return total


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

    The manifest's entries go to a spool file as the members are written, so memory stays the
    same at any file count. With `recipients` the compressed stream is encrypted (age) before it
    is hashed and written.
    """
    sources = _tops(app_dir, names)
    skipped: list[str] = []
    report = Progress("archiving", files_total=_count_files(app_dir, sources))
    progress(report)
    spool = EntrySpool(archive.parent)
    try:
        with atomic_writer(archive) as raw:
            hashed = HashingWriter(raw)
            secret = sealed(hashed, recipients)  # `hashed` itself when encryption is off
            packed = compressor(secret, algorithm, level)
            tar = TarWriter(packed)
            for source in sources:
                if source.present:
                    top = str(app_dir / source.name)
                    _archive_tree(
                        tar,
                        spool,
                        _walk(top, source.name, archive.parent),
                        source,
                        skipped,
                        report,
                        progress,
                    )
            tar.close()
            packed.close()
            if secret is not hashed:
                secret.close()  # seals the final chunk
            hashed.flush()
    except BaseException:
        spool.close()
        raise
    return ArchiveResult(hashed.size, hashed.hexdigest(), spool, sources, skipped)


def _archive_tree(
    tar: TarWriter,
    spool: EntrySpool,
    entries: Iterator[tuple[str, str, int]],
    source: Source,
    skipped: list[str],
    report: Progress,
    progress: ProgressFn,
) -> None:
    """Add one source's entries to `tar` and `spool`, counting its files and bytes."""
    files = nbytes = 0  # plain ints: updating the pydantic Source per file costs ~1 us each
    for rel, path, kind in entries:
        if kind in (_DIR, _LINK):
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                log.warning("%s vanished during the backup; not included", rel)
                skipped.append(rel)
                continue
            mode, mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
            if kind == _DIR:
                tar.add(Member(rel, "dir", mode, mtime=mtime))
                spool.add_dir(rel, mode, mtime)
            else:
                target = os.readlink(path)
                tar.add(Member(rel, "symlink", mode, mtime=mtime, linkname=target))
                spool.add_symlink(rel, mode, target, mtime)
            continue
        if kind == _OTHER:
            skipped.append(rel)
            log.warning("skipping %s: not a regular file, folder or symlink", rel)
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            log.warning("%s vanished during the backup; not included", rel)
            skipped.append(rel)
            continue
        except OSError as exc:
            detail = exc.strerror or str(exc)
            raise SourceUnavailable(f"cannot read {rel}", detail) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # replaced since the folder was listed
                log.warning("%s is no longer a regular file; not included", rel)
                skipped.append(rel)
                continue
            mode, mtime, size = stat.S_IMODE(st.st_mode), int(st.st_mtime), st.st_size
            if size <= SMALL_FILE:
                data = os.read(fd, size)
                if len(data) < size:  # short read: more calls, up to size
                    data += b"".join(_read_chunks(fd, size - len(data)))
                sha256 = hashlib.sha256(data).hexdigest()
                size = len(data)
                tar.add(Member(rel, "file", mode, size, mtime), data)
            else:
                digest = hashlib.sha256()

                def chunks(fd: int = fd, size: int = size, digest=digest) -> Iterator[bytes]:
                    for chunk in _read_chunks(fd, size):
                        digest.update(chunk)
                        yield chunk

                tar.add_stream(Member(rel, "file", mode, size, mtime), chunks())
                sha256 = digest.hexdigest()
        finally:
            os.close(fd)
        spool.add_file(rel, mode, size, sha256, mtime)
        files += 1
        nbytes += size
        report.files_done += 1
        report.bytes_done += size
        progress(report)
    source.files, source.bytes = files, nbytes
