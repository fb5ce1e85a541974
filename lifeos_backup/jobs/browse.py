"""Looking inside backups without restoring them: `ls`, `find` and `diff`.

Everything here reads manifests, and streams a JSON backup's entries (`Manifest.iter_files`):
memory does not grow with the file count. A PostgreSQL backup is described by its manifest's facts
(tables with row counts and sizes, schemas, sequences), a base backup by its WAL range. Only
`diff` of two PostgreSQL backups reads their archives too, as far as their table of contents
(kinds/postgres/objects.py: part 0's head, never the data), to compare the other schema objects
by type and name.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from lifeos_backup.core.errors import LifeosError, NotFound, VerificationFailed
from lifeos_backup.core.names import PathPattern, check_backup_id
from lifeos_backup.formats.manifest import FileEntry, Manifest

if TYPE_CHECKING:
    from lifeos_backup.core.settings import Settings
    from lifeos_backup.kinds.postgres.objects import SchemaObject
    from lifeos_backup.storage.catalog import Backup, Catalog
    from lifeos_backup.storage.repository import Lookup, Record

Warn = Callable[[str], None]


def matching(entries: Iterable[FileEntry], patterns: Sequence[PathPattern]) -> Iterator[FileEntry]:
    """The entries any pattern names (all of them without patterns)."""
    if not patterns:
        yield from entries
        return
    for entry in entries:
        if any(p.matches(entry.path) for p in patterns):
            yield entry


def local_manifest(settings: Settings, catalog: Lookup[Record], backup_id: str) -> Manifest:
    """The manifest of a backup on this disk (the archive is not needed); `catalog` is the store
    or its read-only view (`ls` reads through the view, without SQLAlchemy)."""
    from lifeos_backup.formats.manifest import read_manifest
    from lifeos_backup.storage.offsite.places import remote_only
    from lifeos_backup.storage.repository import locate

    check_backup_id(backup_id)
    row, _archive, mpath = locate(settings, catalog, backup_id)
    try:
        return read_manifest(mpath)
    except FileNotFoundError:
        if remote_only(row, settings.backup_root):
            raise NotFound(
                f"backup {backup_id} is only off-site",
                hint="its manifest is in the bucket; `restore json --from offsite` reads it",
            ) from None
        raise VerificationFailed(
            f"backup {backup_id} is incomplete on disk",
            "manifest missing",
            "use another backup (`lifeos-backup list`)",
        ) from None


# --- ls -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableRow:
    schema: str
    name: str
    rows: int
    bytes: int

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.qualified, "rows": self.rows, "bytes": self.bytes}


def tables(manifest: Manifest, patterns: Sequence[PathPattern] = ()) -> list[TableRow]:
    """A PostgreSQL backup's tables (`schema.name`, optionally those the patterns name)."""
    found = [
        TableRow(str(t["schema"]), str(t["name"]), int(t.get("rows", 0)), int(t.get("bytes", 0)))
        for t in manifest.facts.get("tables", [])
    ]
    if patterns:
        found = [t for t in found if any(p.matches(t.qualified) for p in patterns)]
    return found


WAL_FACTS = (
    "timeline",
    "start_lsn",
    "start_wal_file",
    "stop_lsn",
    "stop_timeline",
    "stop_wal_file",
    "start_time",
    "server_version",
    "label",
)


def wal_range(manifest: Manifest) -> dict[str, Any]:
    """A base backup's place in the WAL: the segments a restore needs, first to last."""
    return {key: manifest.facts.get(key) for key in WAL_FACTS}


# --- find -----------------------------------------------------------------------------------------


@dataclass
class Version:
    """One backup's copy of a matching path, and what the next newer backup searched holds."""

    path: str
    backup_id: str
    created_at: datetime
    status: str
    size: int
    sha256: str | None
    rows: int | None = None
    then: str = "-"  # same, changed, removed (in the next newer backup), "-" for the newest

    def as_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "path": self.path,
            "backup_id": self.backup_id,
            "created_at": self.created_at.isoformat(),
            "status": self.status,
            "size": self.size,
            "sha256": self.sha256,
            "then": self.then,
        }
        if self.rows is not None:
            found["rows"] = self.rows
        return found


def find(
    settings: Settings,
    catalog: Catalog,
    pattern: PathPattern,
    kind: str = "json",
    since: datetime | None = None,
    warn: Warn = lambda _text: None,
) -> Iterator[Version]:
    """Every version of every path `pattern` names, backup by backup, newest first.

    JSON: files (size, SHA-256); PostgreSQL: tables as `schema.name` (rows, size). Only the
    matching paths of the previous (newer) backup are held, to say what became of each version.
    """
    from lifeos_backup.storage.catalog.store import DELETED

    newer: dict[str, str] | None = None  # path -> fingerprint in the next newer backup read
    for row in catalog.list(kind=kind):
        if row.status == DELETED:
            continue
        if since is not None and _aware(row.created_at) < since:
            break  # newest first: every further one is older
        try:
            manifest = local_manifest(settings, catalog, row.id)
        except (NotFound, VerificationFailed) as exc:
            warn(f"{row.id} skipped: {exc.what}")
            continue
        current: dict[str, str] = {}
        for version in _versions(row, manifest, pattern):
            mark = version.sha256 or f"rows={version.rows} bytes={version.size}"
            current[version.path] = mark
            if newer is not None:
                before = newer.get(version.path)
                version.then = "removed" if before is None else (
                    "same" if before == mark else "changed"
                )
            yield version
        newer = current


def _versions(row: Backup, manifest: Manifest, pattern: PathPattern) -> Iterator[Version]:
    if manifest.kind == "postgres":
        for t in tables(manifest, [pattern]):
            yield Version(
                t.qualified, row.id, row.created_at, row.status, t.bytes, None, rows=t.rows
            )
        return
    for entry in matching(manifest.iter_files(), [pattern]):
        if entry.type == "file":
            yield Version(entry.path, row.id, row.created_at, row.status, entry.size, entry.sha256)


def _aware(moment: datetime) -> datetime:
    from datetime import UTC

    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


# --- diff -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One difference between two backups: `added`, `removed` or `changed`."""

    change: str
    path: str
    type: str
    old_size: int | None
    new_size: int | None
    old_sha256: str | None = None
    new_sha256: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "change": self.change,
            "path": self.path,
            "type": self.type,
            "old_size": self.old_size,
            "new_size": self.new_size,
            "old_sha256": self.old_sha256,
            "new_sha256": self.new_sha256,
        }


def _differs(old: FileEntry, new: FileEntry) -> bool:
    return (old.type, old.sha256, old.size, old.mode, old.linkname) != (
        new.type,
        new.sha256,
        new.size,
        new.mode,
        new.linkname,
    )


def _change(kind: str, old: FileEntry | None, new: FileEntry | None) -> Change:
    some = new or old
    assert some is not None
    return Change(
        kind,
        some.path,
        some.type,
        old.size if old else None,
        new.size if new else None,
        old.sha256 if old else None,
        new.sha256 if new else None,
    )


OrderKey = tuple[int, tuple[str, ...], str]


def archive_order(old: Manifest, new: Manifest) -> Callable[[str], OrderKey]:
    """The order the JSON writer adds members in, as a sort key: sources one after another (in
    the manifests' order), each folder's entries by name, then its subfolders' content."""
    ranks: dict[str, int] = {}
    for source in (*old.sources, *new.sources):
        ranks.setdefault(source.name, len(ranks))

    def key(path: str) -> OrderKey:
        parts = path.split("/")
        rank = ranks.get(parts[0], len(ranks))
        if len(parts) == 1:
            return rank, (), ""
        return rank, tuple(parts[1:-1]), parts[-1]

    return key


def in_order(manifest: Manifest, key: Callable[[str], OrderKey]) -> bool:
    """Whether the entries strictly follow `key` (a streamed pass over the manifest)."""
    previous: OrderKey | None = None
    for entry in manifest.iter_files():
        current = key(entry.path)
        if previous is not None and not previous < current:
            return False
        previous = current
    return True


def diff_files(old: Manifest, new: Manifest) -> Iterator[Change]:
    """Files added, removed and changed (by type, SHA-256, size, mode or link) from `old` to
    `new`. A merge of the two streams of entries when both are in archive order (checked first,
    in one streamed pass each), else through an on-disk SQLite table: memory stays bounded."""
    key = archive_order(old, new)
    if in_order(old, key) and in_order(new, key):
        yield from _merged(old.iter_files(), new.iter_files(), key)
    else:
        yield from _through_sqlite(old, new)


def _merged(
    olds: Iterator[FileEntry], news: Iterator[FileEntry], key: Callable[[str], OrderKey]
) -> Iterator[Change]:
    old, new = next(olds, None), next(news, None)
    while old is not None or new is not None:
        if new is None or (old is not None and key(old.path) < key(new.path)):
            assert old is not None
            yield _change("removed", old, None)
            old = next(olds, None)
        elif old is None or key(new.path) < key(old.path):
            yield _change("added", None, new)
            new = next(news, None)
        else:
            if _differs(old, new):
                yield _change("changed", old, new)
            old, new = next(olds, None), next(news, None)


def _tables_of(old: Manifest, new: Manifest) -> list[tuple[str, str, Manifest]]:
    return [
        (
            "CREATE TABLE old (path TEXT PRIMARY KEY, entry TEXT)",
            "INSERT OR REPLACE INTO old VALUES (?, ?)",
            old,
        ),
        (
            "CREATE TABLE new (path TEXT PRIMARY KEY, entry TEXT)",
            "INSERT OR REPLACE INTO new VALUES (?, ?)",
            new,
        ),
    ]


def _through_sqlite(old: Manifest, new: Manifest) -> Iterator[Change]:
    with tempfile.TemporaryDirectory(prefix="lifeos-diff-") as folder:
        db = sqlite3.connect(os.path.join(folder, "diff.sqlite3"))
        with contextlib.closing(db):
            for create, insert, manifest in _tables_of(old, new):
                db.execute(create)
                db.executemany(
                    insert, ((e.path, e.model_dump_json()) for e in manifest.iter_files())
                )
            query = (
                "SELECT o.path, o.entry, n.entry FROM old o LEFT JOIN new n ON n.path = o.path "
                "UNION ALL SELECT n.path, NULL, n.entry FROM new n "
                "WHERE NOT EXISTS (SELECT 1 FROM old o WHERE o.path = n.path) "
                "ORDER BY 1"
            )
            for _path, old_text, new_text in db.execute(query):
                a = FileEntry.model_validate_json(old_text) if old_text else None
                b = FileEntry.model_validate_json(new_text) if new_text else None
                if a is None:
                    yield _change("added", None, b)
                elif b is None:
                    yield _change("removed", a, None)
                elif _differs(a, b):
                    yield _change("changed", a, b)


@dataclass(frozen=True)
class TableChange:
    """A table added, removed, or with another row count or size."""

    change: str
    table: str
    old_rows: int | None
    new_rows: int | None
    old_bytes: int | None
    new_bytes: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "change": self.change,
            "table": self.table,
            "old_rows": self.old_rows,
            "new_rows": self.new_rows,
            "old_bytes": self.old_bytes,
            "new_bytes": self.new_bytes,
        }


@dataclass
class PostgresDiff:
    """What two PostgreSQL backups differ in. Schema objects are compared by name: schemas,
    tables and sequences from the manifests' facts, the other objects (indexes, constraints,
    functions, types, views, triggers, extensions, ...) from the archives' tables of contents
    when they could be read (`objects_compared`; else `note` says why not)."""

    tables: list[TableChange]
    schemas_added: list[str]
    schemas_removed: list[str]
    sequences_added: list[str]
    sequences_removed: list[str]
    objects_added: list[SchemaObject] = field(default_factory=list)
    objects_removed: list[SchemaObject] = field(default_factory=list)
    objects_compared: bool = False
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "tables": [t.as_dict() for t in self.tables],
            "schemas": {"added": self.schemas_added, "removed": self.schemas_removed},
            "sequences": {"added": self.sequences_added, "removed": self.sequences_removed},
            "objects": {
                "added": [o.as_dict() for o in self.objects_added],
                "removed": [o.as_dict() for o in self.objects_removed],
            }
            if self.objects_compared
            else None,
            "note": self.note,
        }

    @property
    def empty(self) -> bool:
        return not (
            self.tables
            or self.schemas_added
            or self.schemas_removed
            or self.sequences_added
            or self.sequences_removed
            or self.objects_added
            or self.objects_removed
        )


def diff_postgres(old: Manifest, new: Manifest) -> PostgresDiff:
    """Tables, row counts, schemas and sequences, from the manifests' facts alone."""
    before = {t.qualified: t for t in tables(old)}
    after = {t.qualified: t for t in tables(new)}
    changes = []
    for name in sorted(before.keys() | after.keys()):
        a, b = before.get(name), after.get(name)
        if a is None:
            assert b is not None
            changes.append(TableChange("added", name, None, b.rows, None, b.bytes))
        elif b is None:
            changes.append(TableChange("removed", name, a.rows, None, a.bytes, None))
        elif a.rows != b.rows:
            changes.append(TableChange("changed", name, a.rows, b.rows, a.bytes, b.bytes))
    schemas = set(old.facts.get("schemas", [])), set(new.facts.get("schemas", []))
    sequences = set(old.facts.get("sequences", [])), set(new.facts.get("sequences", []))
    return PostgresDiff(
        changes,
        sorted(schemas[1] - schemas[0]),
        sorted(schemas[0] - schemas[1]),
        sorted(sequences[1] - sequences[0]),
        sorted(sequences[0] - sequences[1]),
    )


def diff_postgres_backups(
    settings: Settings, catalog: Catalog, old: Manifest, new: Manifest
) -> PostgresDiff:
    """`diff_postgres`, and the other schema objects added or removed, read from the head of
    each archive's part 0. An encrypted backup without a configured private key, or an archive
    whose table of contents cannot be read, leaves the objects out and says so in `note`."""
    found = diff_postgres(old, new)
    locked = [m.backup_id for m in (old, new) if m.encryption is not None]
    if locked and settings.encryption_identity_file is None:
        found.note = (
            f"{' and '.join(locked)} {'is' if len(locked) == 1 else 'are'} encrypted and no "
            "private key is configured (LIFEOS_ENCRYPTION_IDENTITY_FILE): indexes, "
            "constraints, functions and the other objects are not compared, only the manifests"
        )
        return found
    try:
        before = archive_objects(settings, catalog, old)
        after = archive_objects(settings, catalog, new)
    except (LifeosError, OSError) as exc:
        reason = str(exc)
        if isinstance(exc, LifeosError):
            reason = f"{exc.what}: {exc.detail}" if exc.detail else exc.what
        found.note = f"schema objects beyond the manifests not compared: {reason}"
        return found
    from lifeos_backup.kinds.postgres.objects import compare

    found.objects_added, found.objects_removed = compare(before, after)
    found.objects_compared = True
    return found


def archive_objects(settings: Settings, catalog: Catalog, manifest: Manifest) -> set[SchemaObject]:
    """A local PostgreSQL backup's schema objects, from its archive's table of contents."""
    from lifeos_backup.jobs.backups import locate
    from lifeos_backup.kinds.postgres.objects import archive_objects as from_archive

    _row, archive, _mpath = locate(settings, catalog, manifest.backup_id)
    return from_archive(archive, manifest, settings)


def diff_facts(old: Manifest, new: Manifest) -> dict[str, dict[str, Any]]:
    """Facts that differ (base backups: their WAL range), as {fact: {old, new}}."""
    keys = sorted(old.facts.keys() | new.facts.keys())
    return {
        k: {"old": old.facts.get(k), "new": new.facts.get(k)}
        for k in keys
        if old.facts.get(k) != new.facts.get(k)
    }

