"""Reading JSON archives back: verify against the manifest, and restore safely.

Both walk the archive once: the archive's SHA-256, every member's SHA-256, size, type and mode are
checked in the same pass. Restore writes into a hidden staging folder and moves the result into
place only after everything checked out, so a bad archive never leaves half a restore behind.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import posixpath
import shutil
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import zstandard

from lifeos_backup.core.errors import (
    ConfigError,
    PermanentError,
    TargetNotEmpty,
    UnsafeArchive,
    VerificationFailed,
)
from lifeos_backup.core.fsutil import DIR_MODE, FILE_MODE, private_dir
from lifeos_backup.core.progress import Progress, ProgressFn
from lifeos_backup.core.settings import get_settings
from lifeos_backup.formats.crypto import open_plain
from lifeos_backup.formats.manifest import FileEntry, Manifest, require_archive_match
from lifeos_backup.formats.streams import CHUNK, HashingReader, decompressor
from lifeos_backup.formats.tarstream import Member, TarReader

Sink = Callable[[Member, Iterator[bytes]], None]
_STREAM_ERRORS = (zstandard.ZstdError, zlib.error, gzip.BadGzipFile, EOFError)


def _mismatch(what: str, detail: str) -> VerificationFailed:
    return VerificationFailed(what, detail, "the backup is not good; use another one")


def _compare(member: Member, entry: FileEntry | None) -> FileEntry:
    if entry is None:
        raise _mismatch("archive holds a member the manifest does not list", member.path)
    if member.type != entry.type or member.mode != entry.mode:
        raise _mismatch(
            f"{member.path} differs from the manifest",
            f"type/mode {member.type}/{member.mode:o}, manifest {entry.type}/{entry.mode:o}",
        )
    if member.size != entry.size or (member.linkname or None) != entry.linkname:
        raise _mismatch(f"{member.path} differs from the manifest", "size or link target")
    return entry


def check_archive(
    archive: Path, manifest: Manifest, progress: ProgressFn, sink: Sink | None = None
) -> None:
    """Walk the archive once, comparing it with the manifest; hand each member to `sink`."""
    expected = {entry.path: entry for entry in manifest.files}
    report = Progress(
        "verifying",
        files_total=sum(1 for e in manifest.files if e.type == "file"),
        bytes_total=manifest.archive.size,
    )
    try:
        with open(archive, "rb") as raw:
            hashed = HashingReader(raw)
            key = get_settings().encryption_identity_file
            opened = open_plain(hashed, manifest, key)  # decrypts an encrypted archive
            plain = decompressor(opened, manifest.compression.algorithm)
            reader = TarReader(plain)
            for member in reader:
                entry = _compare(member, expected.pop(member.path, None))
                digest = hashlib.sha256()

                def chunks(digest: hashlib._Hash = digest) -> Iterator[bytes]:
                    for chunk in reader.chunks():
                        digest.update(chunk)
                        yield chunk

                if sink is not None:
                    sink(member, chunks())
                for _ in chunks():  # whatever the sink left unread
                    pass
                if entry.type == "file":
                    if digest.hexdigest() != entry.sha256:
                        raise _mismatch(f"{member.path} has the wrong SHA-256", "content changed")
                    report.files_done += 1
                report.bytes_done = hashed.size
                progress(report)
            while plain.read(CHUNK):  # to the end: checks the zstd/gzip frame checksum too
                pass
            if opened is not hashed:
                opened.drain()  # type: ignore[attr-defined]  # authenticates the final chunk
            hashed.drain()
    except _STREAM_ERRORS as exc:
        raise _mismatch(f"archive {archive.name} is corrupt", str(exc)) from exc
    if expected:
        missing = sorted(expected)
        raise _mismatch(
            "archive lacks members listed in the manifest",
            f"{len(missing)} missing, first: {missing[0]}",
        )
    require_archive_match(manifest, archive.name, hashed.size, hashed.hexdigest())


def safe_relpath(path: str) -> str:
    """The member path if it stays inside the target; refuse absolute paths and '..'."""
    if not path or path.startswith("/") or "\\" in path or "\0" in path:
        raise UnsafeArchive("refused archive member", f"unsafe path {path!r}")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafeArchive("refused archive member", f"path {path!r} leaves the target")
    return path


def safe_link(member: Member) -> None:
    """A symlink must point inside the target, and not through absolute paths.

    '..' is allowed only at the start of the target: after a name it would climb out of whatever
    that name resolves to, which for another symlink can be outside the target ('x/..' with
    x -> '.'), however harmless the path looks when normalised as text.
    """
    target = member.linkname
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(member.path), target))
    names = [part for part in target.split("/") if part not in ("", ".")]
    climbs = next((i for i, part in enumerate(names) if part != ".."), len(names))
    if (
        not target
        or target.startswith("/")
        or resolved == ".."
        or resolved.startswith("../")
        or ".." in names[climbs:]
    ):
        raise UnsafeArchive(
            "refused archive member", f"symlink {member.path} -> {target!r} points outside"
        )


class RestoreWriteFailed(PermanentError):
    """The restored files could not be written (a full disk, no permission); nothing was moved
    into the target, and the staging folder was removed."""


_WRITE_HINTS = {
    errno.ENOSPC: "free space there (the restore needs about the backup's unpacked size), or "
    "restore into another folder",
    errno.EDQUOT: "the disk quota is used up: free space, or restore into another folder",
    errno.EACCES: "check the target's permissions, or restore into another folder",
    errno.EROFS: "the target is on a read-only file system: restore into another folder",
}


@contextlib.contextmanager
def _writing(target: Path) -> Iterator[None]:
    """OS errors while writing the restore become one RestoreWriteFailed naming the target."""
    try:
        yield
    except OSError as exc:
        hint = _WRITE_HINTS.get(exc.errno or 0, "check the target folder and its disk")
        raise RestoreWriteFailed(
            f"cannot write the restore into {target}", exc.strerror or str(exc), hint
        ) from exc


def check_target(target: Path, force: bool) -> None:
    """Refuse a target that is not a folder, or a non-empty one without --force: before any
    download or extraction, so a long restore never fails at its first file."""
    if target.exists() and not target.is_dir():
        raise ConfigError(
            f"restore target {target} is not a folder", hint="give a new or empty folder"
        )
    if not _is_empty(target) and not force:
        raise TargetNotEmpty(
            f"restore target {target} is not empty", hint="choose an empty folder or pass --force"
        )


class _Staging:
    """Receives members into a hidden folder inside the target; links and modes are set last."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.links: list[Member] = []
        self.dirs: list[Member] = []
        self.files: list[Member] = []

    def __call__(self, member: Member, chunks: Iterator[bytes]) -> None:
        rel = safe_relpath(member.path)
        if member.type == "symlink":
            safe_link(member)
            self.links.append(member)
            return
        with _writing(self.root.parent):
            self._write(member, self.root / rel, chunks)

    def _write(self, member: Member, dest: Path, chunks: Iterator[bytes]) -> None:
        dest.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        if member.type == "dir":
            dest.mkdir(mode=DIR_MODE, exist_ok=True)
            self.dirs.append(member)
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(dest, flags, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
        self.files.append(member)

    def finish(self) -> None:
        linked = {member.path for member in self.links}
        for member in [*self.links, *self.dirs, *self.files]:
            parts = member.path.split("/")
            for depth in range(1, len(parts)):
                if "/".join(parts[:depth]) in linked:  # would be created through that symlink
                    raise UnsafeArchive(
                        "refused archive member",
                        f"{member.path} lies under symlink {'/'.join(parts[:depth])}",
                    )
        for member in self.links:
            os.symlink(member.linkname, self.root / member.path)
        for member in self.files:
            path = self.root / member.path
            os.chmod(path, member.mode)
            os.utime(path, (member.mtime, member.mtime))
        for member in reversed(self.dirs):  # children before parents: a 0500 folder is set last
            os.chmod(self.root / member.path, member.mode)


def _is_empty(target: Path) -> bool:
    return not target.exists() or not any(target.iterdir())


def restore_archive(
    archive: Path, manifest: Manifest, target: Path, force: bool, progress: ProgressFn
) -> int:
    """Verify and extract into `target`; returns the number of files restored."""
    check_target(target, force)
    created = not target.exists()
    staging = Path(
        os.path.join(target, f".lifeos-restore-{manifest.backup_id}-{os.getpid()}.partial")
    )
    try:
        with _writing(target):
            if created:
                private_dir(target)
            shutil.rmtree(staging, ignore_errors=True)
            private_dir(staging)
        sink = _Staging(staging)
        check_archive(archive, manifest, progress, sink)
    except BaseException:
        with contextlib.suppress(OSError):
            _make_removable(staging)
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(target, ignore_errors=True)  # leave no trace of a refused restore
        raise
    try:
        with _writing(target):
            sink.finish()
            _move_into(staging, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            _make_removable(staging)
            shutil.rmtree(staging)
    return len(sink.files)


def _move_into(staging: Path, target: Path) -> None:
    """Replace the target's top-level entries by the staged ones (checked, complete)."""
    for top in sorted(os.listdir(staging)):
        dest = target / top
        if dest.is_symlink() or dest.is_file():
            dest.unlink()
        elif dest.exists():
            shutil.rmtree(dest)
        os.replace(staging / top, dest)


def _make_removable(root: Path) -> None:
    """Restored folders may be read-only; open them up again so a failed staging can be removed."""
    for folder, _dirs, _files in os.walk(root):
        os.chmod(folder, DIR_MODE)
