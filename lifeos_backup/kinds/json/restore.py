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
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import zstandard

from lifeos_backup.core.errors import (
    ConfigError,
    NotFound,
    PermanentError,
    TargetNotEmpty,
    UnsafeArchive,
    VerificationFailed,
)
from lifeos_backup.core.fsutil import DIR_MODE, FILE_MODE, private_dir
from lifeos_backup.core.names import PathPattern
from lifeos_backup.core.progress import Progress, ProgressFn
from lifeos_backup.core.settings import get_settings
from lifeos_backup.formats.crypto import open_plain
from lifeos_backup.formats.manifest import FileEntry, Manifest, require_archive_match
from lifeos_backup.formats.streams import CHUNK, HashingReader, ReadAhead, decompressor
from lifeos_backup.formats.tarstream import Member, TarReader

Sink = Callable[[Member, Iterator[bytes]], None]
_STREAM_ERRORS = (zstandard.ZstdError, zlib.error, gzip.BadGzipFile, EOFError)


def _mismatch(what: str, detail: str) -> VerificationFailed:
    return VerificationFailed(what, detail, "the backup is not good; use another one")


def _corrupt(archive: Path, exc: BaseException) -> VerificationFailed:
    return _mismatch(f"archive {archive.name} is corrupt", str(exc))


def _compare(member: Member, entry: FileEntry | None) -> FileEntry:
    if entry is None:
        raise _mismatch("archive holds a member the manifest does not list", member.path)
    if member.path != entry.path:  # members and entries are in the same order
        raise _mismatch(
            "archive holds a member the manifest does not list",
            f"{member.path} (where the manifest lists {entry.path})",
        )
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
    """Walk the archive once, comparing it with the manifest; hand each member to `sink`.

    Members are compared with the manifest's entries one by one, in order (the writer adds them
    in the same order), with the entries streamed from disk: memory does not grow with the
    file count.
    """
    expected = manifest.iter_files()
    report = Progress(
        "verifying",
        files_total=sum(s.files for s in manifest.sources),
        bytes_total=manifest.archive.size,
    )
    try:
        with open(archive, "rb") as raw:
            hashed = HashingReader(raw)
            key = get_settings().encryption_identity_file
            opened = open_plain(hashed, manifest, key)  # decrypts an encrypted archive
            # Decompression (and decryption) run a few chunks ahead in a thread: on the other
            # core, while this one parses headers and hashes members.
            with ReadAhead(decompressor(opened, manifest.compression.algorithm)) as plain:
                reader = TarReader(plain)
                for member in reader:
                    entry = _compare(member, next(expected, None))
                    digest = hashlib.sha256()
                    if sink is None:  # verify: hash the content, nothing else
                        for chunk in reader.chunks():
                            digest.update(chunk)
                    else:

                        def chunks(digest: hashlib._Hash = digest) -> Iterator[bytes]:
                            try:
                                for chunk in reader.chunks():
                                    digest.update(chunk)
                                    yield chunk
                            except _STREAM_ERRORS as exc:  # a damaged stream, not the sink's
                                raise _corrupt(archive, exc) from exc  # write (OSError: gzip)

                        sink(member, chunks())
                        for _ in chunks():  # whatever the sink left unread
                            pass
                    if entry.type == "file":
                        if digest.hexdigest() != entry.sha256:
                            what = f"{member.path} has the wrong SHA-256"
                            raise _mismatch(what, "content changed")
                        report.files_done += 1
                    report.bytes_done = hashed.size
                    progress(report)
                while plain.read(CHUNK):  # to the end: checks the zstd/gzip frame checksum too
                    pass
            if opened is not hashed:
                opened.drain()  # type: ignore[attr-defined]  # authenticates the final chunk
            hashed.drain()
    except _STREAM_ERRORS as exc:
        raise _corrupt(archive, exc) from exc
    missing = next(expected, None)
    if missing is not None:
        count = 1 + sum(1 for _ in expected)
        raise _mismatch(
            "archive lacks members listed in the manifest",
            f"{count} missing, first: {missing.path}",
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
    """Receives members into a hidden folder inside the target; links are made last.

    Files get their mode and mtime as they are written, folders that would block writing into
    them (no owner rwx) get theirs last, so what is held until the end is the symlinks and
    those folders only, not one record per file.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.links: list[Member] = []
        self.linked: set[str] = set()
        self.locked_dirs: list[tuple[str, int]] = []
        self.files = 0
        self._parent = ""  # the last folder a file was written into (known to exist)

    def __call__(self, member: Member, chunks: Iterator[bytes]) -> None:
        rel = safe_relpath(member.path)
        if self.linked:
            self._not_under_link(rel)
        if member.type == "symlink":
            safe_link(member)
            if os.path.lexists(os.path.join(self.root, rel)):  # something is staged under it
                raise UnsafeArchive(
                    "refused archive member", f"symlink {rel} stands where other members are"
                )
            self.links.append(member)
            self.linked.add(rel)
            return
        with _writing(self.root.parent):
            self._write(member, os.path.join(self.root, rel), chunks)

    def _not_under_link(self, rel: str) -> None:
        """Refuse a member at or under a symlink of the archive: it would be made through it."""
        cut = len(rel)
        while cut > 0:
            if rel[:cut] in self.linked:
                raise UnsafeArchive(
                    "refused archive member", f"{rel} lies under symlink {rel[:cut]}"
                )
            cut = rel.rfind("/", 0, cut)

    def _write(self, member: Member, dest: str, chunks: Iterator[bytes]) -> None:
        parent = os.path.dirname(dest)
        if parent != self._parent:
            os.makedirs(parent, mode=DIR_MODE, exist_ok=True)
            self._parent = parent
        if member.type == "dir":
            with contextlib.suppress(FileExistsError):
                os.mkdir(dest, DIR_MODE)
            if member.mode & 0o700 == 0o700:
                os.chmod(dest, member.mode)
            else:  # set last, after its content is written
                self.locked_dirs.append((dest, member.mode))
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        try:
            fd = os.open(dest, flags, FILE_MODE)
        except FileExistsError:
            raise UnsafeArchive(
                "refused archive member", f"{member.path} is in the archive twice"
            ) from None
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            os.fchmod(fd, member.mode)
            os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)
        self.files += 1

    def finish(self) -> None:
        for member in self.links:
            os.symlink(member.linkname, os.path.join(self.root, member.path))
        for dest, mode in reversed(self.locked_dirs):  # children before parents: 0500 last
            os.chmod(dest, mode)


def _is_empty(target: Path) -> bool:
    return not target.exists() or not any(target.iterdir())


def restore_archive(
    archive: Path, manifest: Manifest, target: Path, force: bool, progress: ProgressFn
) -> int:
    """Verify and extract into `target`; returns the number of files restored."""
    check_target(target, force)
    with _staging_in(target, manifest.backup_id) as staging:
        sink = _Staging(staging)
        check_archive(archive, manifest, progress, sink)
        with _writing(target):
            sink.finish()
            _move_into(staging, target)
    return sink.files


@contextlib.contextmanager
def _staging_in(target: Path, backup_id: str) -> Iterator[Path]:
    """A private hidden folder inside `target` (created when missing) that checked files wait
    in; it goes in the end, and on any failure so does a target this restore created, so a
    refused restore leaves no trace."""
    created = not target.exists()
    staging = Path(os.path.join(target, f".lifeos-restore-{backup_id}-{os.getpid()}.partial"))
    try:
        with _writing(target):
            if created:
                private_dir(target)
            shutil.rmtree(staging, ignore_errors=True)
            private_dir(staging)
        yield staging
    except BaseException:
        with contextlib.suppress(OSError):
            _make_removable(staging)
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(target, ignore_errors=True)
        raise
    with contextlib.suppress(FileNotFoundError):
        _make_removable(staging)
        shutil.rmtree(staging)


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


# --- Single files: `restore json --include GLOB` ------------------------------------------------


def _selected(manifest: Manifest, patterns: Sequence[PathPattern]) -> Iterator[FileEntry]:
    """The regular files of the manifest that a pattern names (streamed)."""
    for entry in manifest.iter_files():
        if entry.type == "file" and any(p.matches(entry.path) for p in patterns):
            yield entry


def _shown(patterns: Sequence[PathPattern]) -> str:
    return " ".join(p.text for p in patterns)


def check_selection(
    manifest: Manifest,
    patterns: Sequence[PathPattern],
    target: Path | None,
    force: bool,
) -> int:
    """How many files the patterns select, refused before the archive is read: none; with no
    target (stdout) anything but exactly one; with a target, files already there (unless
    `force`), or a selected path that crosses a symlink or a file of the target."""
    count, names, taken = 0, list[str](), list[str]()
    for entry in _selected(manifest, patterns):
        count += 1
        if len(names) < 3:
            names.append(entry.path)
        if target is not None and len(taken) < 3:
            problem = _blocked(target, safe_relpath(entry.path), force)
            if problem:
                taken.append(problem)
    if count == 0:
        raise NotFound(
            f"no file of backup {manifest.backup_id} matches {_shown(patterns)}",
            hint=f"see `lifeos-backup ls {manifest.backup_id}`; globs match the path in the "
            "backup, e.g. data/characters/*.json",
        )
    if target is None and count > 1:
        more = ", ..." if count > len(names) else ""
        raise ConfigError(
            f"--to-stdout needs exactly one file; {_shown(patterns)} matches {count}",
            f"{', '.join(names)}{more}",
            "narrow the glob, or restore them into a folder with --target",
        )
    if taken:
        raise TargetNotEmpty(
            f"restore target {target} already holds what --include would write",
            "; ".join(taken),
            "restore into a new or empty folder, or pass --force to replace those files",
        )
    return count


def _blocked(target: Path, rel: str, force: bool) -> str | None:
    """Why `rel` may not be written under `target`, or None."""
    where = target
    parts = rel.split("/")
    for part in parts[:-1]:
        where = where / part
        if where.is_symlink():
            return f"{where} is a symlink"
        if where.exists() and not where.is_dir():
            return f"{where} is not a folder"
        if not where.exists():
            return None
    dest = where / parts[-1]
    if dest.is_symlink() or (dest.exists() and not dest.is_file()):
        return f"{dest} exists and is not a regular file"
    if dest.exists() and not force:
        return f"{dest} exists"
    return None


class _Selected(_Staging):
    """Stages only the selected regular files (the other members are checked, not written)."""

    def __init__(self, root: Path, patterns: Sequence[PathPattern]) -> None:
        super().__init__(root)
        self.patterns = patterns

    def __call__(self, member: Member, chunks: Iterator[bytes]) -> None:
        if member.type == "file" and any(p.matches(member.path) for p in self.patterns):
            rel = safe_relpath(member.path)
            with _writing(self.root.parent):
                self._write(member, os.path.join(self.root, rel), chunks)


def restore_selected(
    archive: Path,
    manifest: Manifest,
    patterns: Sequence[PathPattern],
    target: Path,
    force: bool,
    progress: ProgressFn,
) -> int:
    """Restore the selected files into `target` (which may hold other files); returns how many.

    The whole archive is read and checked as in a full restore; the selected files are staged
    in a hidden folder inside the target and moved into place only once every checksum matched,
    so a mismatch leaves nothing of them behind. An existing file is never replaced without
    `force`: it is refused before the archive is read, and again as each file is moved.
    """
    if target.exists() and not target.is_dir():
        raise ConfigError(f"restore target {target} is not a folder", hint="give a folder")
    check_selection(manifest, patterns, target, force)
    with _staging_in(target, manifest.backup_id) as staging:
        sink = _Selected(staging, patterns)
        check_archive(archive, manifest, progress, sink)
        with _writing(target):
            for folder, _dirs, files in os.walk(staging):
                for name in sorted(files):
                    staged = os.path.join(folder, name)
                    _place(staged, target, os.path.relpath(staged, staging), force)
    return sink.files


def _place(staged: str, target: Path, rel: str, force: bool) -> None:
    """Move one checked file to `target/rel`, creating private folders on the way; never
    through a symlink, and never over an existing file without `force`."""
    problem = _blocked(target, rel, force)
    if problem:
        raise TargetNotEmpty(
            f"restore target {target} changed during the restore",
            problem,
            "restore into a new or empty folder, or pass --force to replace existing files",
        )
    dest = target / rel
    os.makedirs(dest.parent, mode=DIR_MODE, exist_ok=True)
    if force:
        os.replace(staged, dest)
        return
    try:
        os.link(staged, dest)  # fails if dest appeared meanwhile: never replaced
    except FileExistsError:
        raise TargetNotEmpty(
            f"restore target {target} changed during the restore",
            f"{dest} exists",
            "pass --force to replace it",
        ) from None
    except OSError:  # a file system without hard links: checked just above
        os.replace(staged, dest)
        return
    os.unlink(staged)


def extract_one(
    archive: Path,
    manifest: Manifest,
    patterns: Sequence[PathPattern],
    out: BinaryIO,
    progress: ProgressFn,
) -> int:
    """Write the one selected file's bytes to `out`, only once the whole archive checked out
    (held in memory up to 16 MiB, beyond that in an unlinked temporary file); returns its size."""
    check_selection(manifest, patterns, None, False)
    with tempfile.SpooledTemporaryFile(max_size=16 << 20) as held:

        def sink(member: Member, chunks: Iterator[bytes]) -> None:
            if member.type == "file" and any(p.matches(member.path) for p in patterns):
                for chunk in chunks:
                    held.write(chunk)

        check_archive(archive, manifest, progress, sink)
        size = held.tell()
        held.seek(0)
        shutil.copyfileobj(held, out, CHUNK)
        out.flush()
    return size
