"""Read-only catalog queries without SQLAlchemy: what `list`, `show` and `audit` ask.

Why: operators and scripts call these commands in loops, and importing SQLAlchemy and the models
is about half of their start-up (benchmarks/cli_start.py). They only read, with a few fixed
SELECTs, so they go through the database driver itself: the standard library's sqlite3 for the
embedded catalog (the generation its pointer leads to, as lifeos_backup.storage.catalog.store
opens it), psycopg for a PostgreSQL catalog. Rows are frozen dataclasses whose fields are the
models' columns, with aware UTC datetimes as the models give them; a unit test runs every query
here beside the store's on the same catalogs, SQLite and PostgreSQL, and compares the answers.

A catalog this module does not read itself (missing, at an older schema, or a URL other than a
plain `sqlite:///FILE` or `postgresql://...`) is opened once through the full Catalog, which
creates or migrates it as every command does, and read through that connection.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from lifeos_backup.storage.catalog import generations
from lifeos_backup.storage.catalog.schema import HEAD, no_such_backup, unreadable_error


@dataclass(frozen=True, slots=True)
class BackupRow:
    """A row of `backups` (lifeos_backup.storage.catalog.models.Backup)."""

    id: str
    kind: str
    status: str
    path: str
    size: int | None
    sha256: str | None
    reason: str
    initiator: str
    host: str
    created_at: datetime
    finished_at: datetime | None
    verified_at: datetime | None
    duration_s: float | None
    error: str | None
    task_id: str | None
    offsite_status: str | None
    offsite_key: str | None
    offsite_checksum: str | None
    offsite_uploaded_at: datetime | None
    offsite_checked_at: datetime | None
    offsite_error: str | None
    offsite_attempts: int | None
    offsite_upload_id: str | None


@dataclass(frozen=True, slots=True)
class ActionRow:
    """A row of `actions`, one audit record (lifeos_backup.storage.catalog.models.Action)."""

    id: int
    at: datetime
    action: str
    target: str
    actor: str
    backup_id: str | None
    detail: str
    status: str | None
    size: int | None
    duration_s: float | None
    location: str | None
    prev_hash: str | None
    hash: str | None


Row = TypeVar("Row", BackupRow, ActionRow)


def _utc(value: Any) -> Any:
    """A stored time as an aware UTC datetime: SQLite keeps text without an offset (in UTC, as
    the models write it), PostgreSQL returns aware datetimes."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


def _times(row_type: type[Any]) -> frozenset[str]:
    return frozenset(f.name for f in fields(row_type) if "datetime" in str(f.type))


_TIMES = {BackupRow: _times(BackupRow), ActionRow: _times(ActionRow)}


class CatalogView:
    """Read-only queries on one open DBAPI connection; `open_view` makes one."""

    def __init__(self, connection: Any, paramstyle: str, embedded: bool) -> None:
        self._conn = connection
        self._mark = "?" if paramstyle == "qmark" else "%s"
        self._embedded = embedded

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one SELECT written with `?` marks; a driver error is CatalogUnreadable."""
        try:
            cursor = self._conn.cursor()
            try:
                cursor.execute(sql.replace("?", self._mark), tuple(args))
                return list(cursor.fetchall())
            finally:
                cursor.close()
        except _driver_errors() as exc:
            raise unreadable_error(str(exc).strip().splitlines()[0], self._embedded) from exc

    def _rows(self, row_type: type[Row], table: str, tail: str, args: Sequence[Any]) -> list[Row]:
        names = [f.name for f in fields(row_type)]
        times = _TIMES[row_type]
        # Column and table names and clauses are this module's constants; values are bound.
        found = self._query(f"SELECT {', '.join(names)} FROM {table} {tail}", args)  # noqa: S608
        return [
            row_type(*(_utc(v) if n in times else v for n, v in zip(names, r, strict=True)))
            for r in found
        ]

    def _bind_time(self, at: datetime) -> Any:
        """A time as the models store it: SQLite compares the text, without an offset."""
        at = at.astimezone(UTC)
        return at.strftime("%Y-%m-%d %H:%M:%S.%f") if self._mark == "?" else at

    def backups(self, kind: str | None = None) -> list[BackupRow]:
        """Backups, newest first (the store's `list`)."""
        where = "WHERE kind = ? " if kind else ""
        order = "ORDER BY created_at DESC, id DESC"
        return self._rows(BackupRow, "backups", where + order, [kind] if kind else [])

    def get(self, backup_id: str) -> BackupRow:
        """One backup (the store's `get`)."""
        found = self._rows(BackupRow, "backups", "WHERE id = ?", [backup_id])
        if not found:
            raise no_such_backup(backup_id)
        return found[0]

    def copy_statuses(self) -> dict[str, dict[str, str | None]]:
        """Every off-site copy's status: backup id -> target -> status."""
        held: dict[str, dict[str, str | None]] = {}
        for backup_id, target, status in self._query(
            "SELECT backup_id, target, status FROM offsite_copies ORDER BY id"
        ):
            held.setdefault(backup_id, {})[target] = status
        return held

    def actions(self, since: datetime | None = None, action: str | None = None) -> list[ActionRow]:
        """Audit records, oldest first; `action` matches a prefix (lifeos_backup.storage.audit's
        `records`)."""
        where: list[str] = []
        args: list[Any] = []
        if since is not None:
            where.append("at >= ?")
            args.append(self._bind_time(since))
        if action:
            where.append("action LIKE ?")
            args.append(action + "%")
        tail = ("WHERE " + " AND ".join(where) + " " if where else "") + "ORDER BY id"
        return self._rows(ActionRow, "actions", tail, args)


def _driver_errors() -> tuple[type[Exception], ...]:
    found: list[type[Exception]] = [sqlite3.Error]
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None:
        found.append(psycopg.Error)
    return tuple(found)


def _plain_sqlite_file(url: str) -> Path | None:
    """The file of `sqlite:///FILE` (what LIFEOS_CATALOG_URL defaults to); None for anything
    that needs SQLAlchemy's URL rules (query strings, escapes, `file:` URIs, memory)."""
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix):
            db = url[len(prefix) :]
            if not db or db == ":memory:" or db.startswith("file:") or set(db) & set("?%#"):
                return None
            return Path(os.path.abspath(db))
    return None


def _plain_postgres(url: str) -> str | None:
    """libpq's form of a PostgreSQL URL for psycopg 3, or None for another database or driver."""
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return None


def _revision(conn: Any) -> str | None:
    cursor = conn.cursor()
    try:
        cursor.execute("SELECT version_num FROM alembic_version")
        found = cursor.fetchone()
    finally:
        cursor.close()
    return found[0] if found else None


def _open_sqlite(configured: Path) -> sqlite3.Connection | None:
    """A connection to the generation the pointer leads to, at the newest schema; None when
    there is none yet, or its schema is older (the full Catalog makes or migrates it)."""
    path = generations.current(configured)
    if path is None:
        return None
    uri = f"file:{quote(str(path))}?mode=rw"  # never creates a file (see store._file_engine)
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False)
    except sqlite3.OperationalError:
        return None  # set aside between resolving and opening: the full Catalog finds it again
    try:
        if _revision(conn) == HEAD:
            return conn
    except sqlite3.OperationalError:
        pass  # no alembic_version yet: an empty catalog
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise unreadable_error(str(exc).splitlines()[0], embedded=True) from exc
    conn.close()
    return None


def _open_postgres(conninfo: str) -> Any:
    import psycopg

    try:
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise unreadable_error(str(exc).strip().splitlines()[0], embedded=False) from exc
    try:
        if _revision(conn) == HEAD:
            return conn
    except psycopg.Error:
        pass  # no alembic_version yet
    conn.close()
    return None


@contextmanager
def open_view(url: str) -> Iterator[CatalogView]:
    """A read-only view of the catalog at `url`, closed on exit."""
    conn: Any = None
    paramstyle = "qmark"
    embedded = False
    file = _plain_sqlite_file(url)
    conninfo = _plain_postgres(url) if file is None else None
    if file is not None:
        conn, embedded = _open_sqlite(file), True
    elif conninfo is not None:
        conn, paramstyle = _open_postgres(conninfo), "format"
    if conn is None:  # made, migrated or read through the full Catalog
        from lifeos_backup.storage.catalog.store import open_catalog

        catalog = open_catalog(url)
        embedded = catalog.file_path is not None
        paramstyle = catalog.engine.dialect.paramstyle
        conn = catalog.engine.raw_connection()
    try:
        yield CatalogView(conn, paramstyle, embedded)
    finally:
        conn.close()
