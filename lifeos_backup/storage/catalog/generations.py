"""Where an SQLite catalog lives: the configured path is a pointer to a generation file.

Why: SQLite names a WAL database's sidecars after the path it opened (`<path>-wal`, `-shm`) and,
when the last connection of a process closes, checkpoints and deletes them by that name. A
catalog file deleted or replaced while workers keep it open would therefore share its sidecars
with the next file at the same path, and the two would corrupt each other (first symptom:
`disk I/O error`). So no path ever names two databases: each database is a *generation* with a
name used once, `<dir>/.state/catalog/<stem>-<UTC stamp>-<random><suffix>`, and the configured
path (`catalog.sqlite3`) is a relative symlink to the current one. The catalog hands SQLite the
generation's own path, so its sidecars carry the generation's name. Replacing the catalog is one
atomic rename of the symlink; every process notices it with one `stat` before its next session
(lifeos_backup.storage.catalog.store) and reopens.

A plain file at the configured path (a catalog from before this layout) stays in use as it is:
renaming a database that other processes have open would split it from its sidecars. When the
configured path is missing (a deleted pointer, or a deleted plain file whose sidecars are still
there), the next opener creates a new generation and a pointer, under a file lock so that two
processes never make two.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from lifeos_backup.core.errors import PermanentError
from lifeos_backup.core.fsutil import FILE_MODE, fsync_dir, private_dir

log = logging.getLogger(__name__)

GENERATIONS = Path(".state") / "catalog"
ASIDE = ".corrupt-"  # a replaced catalog is kept as <its name>.corrupt-<stamp>
SIDECARS = ("-wal", "-shm", "-journal")
Identity = tuple[int, int]  # (st_dev, st_ino): which file a path leads to


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def generation_dir(pointer: Path) -> Path:
    return pointer.parent / GENERATIONS


def _generation_dir(pointer: Path) -> Path:
    """The generations' folder, made 0700 at every level below the pointer's own folder."""
    for folder in (pointer.parent, pointer.parent / GENERATIONS.parent, generation_dir(pointer)):
        private_dir(folder)
    return generation_dir(pointer)


def identity(path: Path) -> Identity | None:
    """The file `path` leads to now (symlinks followed), or None when there is none."""
    try:
        found = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return found.st_dev, found.st_ino


def current(pointer: Path) -> Path | None:
    """The database file the configured path leads to, creating nothing: the generation a
    pointer names, the plain (legacy) file itself, or None (missing, or a dangling pointer)."""
    if pointer.is_symlink():
        target = Path(os.path.normpath(pointer.parent / os.readlink(pointer)))
        return target if target.is_file() else None
    return pointer if pointer.is_file() else None


@contextlib.contextmanager
def creation_lock(pointer: Path) -> Iterator[None]:
    """Serialize making and swapping generations of one configured path across processes."""
    folder = _generation_dir(pointer)
    lock = folder / f".{pointer.name}.lock"
    fd = os.open(lock, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def new_generation(pointer: Path) -> Path:
    """An empty 0600 file under a name never used before; nothing points to it yet."""
    folder = _generation_dir(pointer)
    path = folder / f"{pointer.stem}-{_stamp()}-{secrets.token_hex(4)}{pointer.suffix}"
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, FILE_MODE))
    fsync_dir(folder)
    return path


def point(pointer: Path, generation: Path) -> None:
    """Make the configured path lead to `generation`: a relative symlink made at a temporary
    name, then renamed over the old pointer in one step (readers see the old or the new one)."""
    link = os.path.relpath(generation, pointer.parent)
    tmp = pointer.with_name(f".{pointer.name}.{secrets.token_hex(4)}.link")
    os.symlink(link, tmp)
    try:
        os.replace(tmp, pointer)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(pointer.parent)


def resolve(pointer: Path) -> Path:
    """The database file to open for the configured path; when the path is missing or its
    generation is gone, a new generation and a pointer to it (made once, under the lock)."""
    found = current(pointer)
    if found is not None:
        return found
    with creation_lock(pointer):
        found = current(pointer)  # another process may have made one while this one waited
        if found is not None:
            return found
        generation = new_generation(pointer)
        point(pointer, generation)
    log.warning(
        "catalog %s was missing: started a new, empty one (%s); `lifeos-backup catalog rebuild` "
        "lists the backups in it again",
        pointer,
        generation,
    )
    return generation


def set_aside(path: Path) -> Path:
    """Rename a replaced catalog to `<name>.corrupt-<stamp>` beside it, for inspection."""
    aside = path.with_name(f"{path.name}{ASIDE}{_stamp()}")
    os.rename(path, aside)
    fsync_dir(path.parent)
    return aside


def swap(pointer: Path, fresh: Path, replaced: Path, replaced_identity: Identity | None) -> Path:
    """Point the configured path at `fresh` instead of the unusable `replaced`, which is kept
    aside; returns where. Refused when the catalog changed since it was judged unusable."""
    with creation_lock(pointer):
        if identity(pointer) != replaced_identity:
            raise PermanentError(
                f"the catalog {pointer} changed while it was rebuilt",
                "another process replaced it in the meantime",
                "run `lifeos-backup catalog rebuild` again",
            )
        if replaced == pointer:  # a plain (legacy) file: moved aside, a pointer takes its place
            aside = set_aside(pointer)
            point(pointer, fresh)
        else:  # a generation: openers follow the new pointer; the old file then goes aside
            point(pointer, fresh)
            aside = set_aside(replaced)
    return aside


def problem_of(path: Path) -> str | None:
    """Why the file at `path` is no usable catalog (not a database, corrupt, or without our
    tables), or None when it opens, passes `PRAGMA quick_check` and holds our schema."""
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=rw", uri=True, timeout=30)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        checked = [str(row[0]) for row in conn.execute("PRAGMA quick_check").fetchall()]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        conn.close()
    if checked != ["ok"]:
        return "quick_check: " + "; ".join(checked[:3])
    if not {"backups", "alembic_version"} <= tables:
        return "it holds no catalog tables"
    return None


def kept_aside(pointer: Path) -> list[Path]:
    """Earlier catalogs still on disk: superseded generations and files set aside as corrupt."""
    now = current(pointer)
    found: list[Path] = []
    places = ((generation_dir(pointer), f"{pointer.stem}-*"), (pointer.parent, pointer.name + "*"))
    for folder, pattern in places:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(pattern)):
            if path in (pointer, now) or path.name.endswith(SIDECARS) or not path.is_file():
                continue
            if path.name.endswith(pointer.suffix) or ASIDE in path.name:
                found.append(path)
    return found
