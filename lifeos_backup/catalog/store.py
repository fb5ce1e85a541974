"""Reads and writes of the catalog; every status change of a backup goes through here.

The catalog is an index, not the truth: `rebuild` recreates it from the manifests on disk.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from lifeos_backup.catalog.models import Action, Backup, TaskRun
from lifeos_backup.errors import NotFound
from lifeos_backup.fsutil import FILE_MODE, private_dir

RUNNING, CREATED, VERIFIED, FAILED, DELETED = "running", "created", "verified", "failed", "deleted"
# Set only by `catalog rebuild`: listed from a manifest it was told to trust without re-reading
# the archive (`--trust-manifests`), or an archive found without its manifest.
UNVERIFIED, INCOMPLETE = "unverified", "incomplete"
STATUSES = (RUNNING, CREATED, VERIFIED, FAILED, DELETED, UNVERIFIED, INCOMPLETE)
MIGRATIONS = Path(__file__).with_name("migrations")
# The newest migration (a unit test checks it against migrations/versions). A catalog already
# there is not handed to Alembic at all: importing it costs every CLI call about 0.4 s.
HEAD = "0005_task"
_OPEN: dict[str, Catalog] = {}
logging.getLogger("alembic").setLevel(logging.WARNING)  # "Context impl SQLiteImpl" on every open


def utcnow() -> datetime:
    return datetime.now(UTC)


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets the CLI read while a worker writes; busy_timeout makes writers wait, not fail.
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _with_driver(url: str) -> str:
    """Plain postgresql:// means psycopg 3 here (SQLAlchemy would pick psycopg2, not installed)."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def open_catalog(url: str) -> Catalog:
    """The process's catalog for `url` (schema checked once per process, not per call)."""
    if url not in _OPEN:
        _OPEN[url] = Catalog(url)
    return _OPEN[url]


class Catalog:
    """One catalog database; upgrades its own schema when opened."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(_with_driver(url), future=True)
        if self.engine.dialect.name == "sqlite":
            db = self.engine.url.database
            if db and db != ":memory:":
                private_dir(Path(db).parent)
                os.close(os.open(db, os.O_CREAT | os.O_WRONLY, FILE_MODE))  # 0600 before SQLite
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self.ensure_schema()

    def ensure_schema(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent, safe between processes)."""
        if self.revision() == HEAD:
            return
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self._migration_lock(), self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def revision(self) -> str | None:
        """The schema's Alembic revision; None for a new (empty) catalog."""
        try:
            with self.engine.connect() as conn:
                return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError:  # no alembic_version table yet
            return None

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        db = self.engine.url.database
        if self.engine.dialect.name != "sqlite" or not db or db == ":memory:":
            yield
            return
        fd = os.open(Path(db).with_suffix(".migrate.lock"), os.O_CREAT | os.O_WRONLY, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._session.begin() as session:
            yield session

    # Backups -------------------------------------------------------------------------------

    def add_backup(self, backup: Backup) -> None:
        with self.session() as s:
            s.merge(backup)

    def get(self, backup_id: str) -> Backup:
        with self.session() as s:
            row = s.get(Backup, backup_id)
        if row is None:
            raise NotFound(
                f"no backup {backup_id!r} in the catalog", hint="see `lifeos-backup list`"
            )
        return row

    def exists(self, backup_id: str) -> bool:
        with self.session() as s:
            return s.get(Backup, backup_id) is not None

    def list(
        self, kind: str | None = None, statuses: tuple[str, ...] | None = None
    ) -> list[Backup]:
        """Backups, newest first."""
        query = select(Backup).order_by(Backup.created_at.desc(), Backup.id.desc())
        if kind:
            query = query.where(Backup.kind == kind)
        if statuses:
            query = query.where(Backup.status.in_(statuses))
        with self.session() as s:
            return list(s.scalars(query))

    def update(self, backup_id: str, **fields: object) -> Backup:
        with self.session() as s:
            row = s.get(Backup, backup_id)
            if row is None:
                raise NotFound(f"no backup {backup_id!r} in the catalog")
            for key, value in fields.items():
                setattr(row, key, value)
            return row

    # Task runs -----------------------------------------------------------------------------

    def task_started(self, task_id: str, task_name: str, attempt: int, worker: str) -> int:
        with self.session() as s:
            run = TaskRun(
                task_id=task_id,
                task_name=task_name,
                state="started",
                attempt=attempt,
                worker=worker,
                started_at=utcnow(),
            )
            s.add(run)
            s.flush()
            return run.id

    def task_finished(
        self, run_id: int, state: str, backup_id: str | None = None, error: str | None = None
    ) -> None:
        with self.session() as s:
            run = s.get(TaskRun, run_id)
            if run is not None:
                run.state, run.finished_at, run.error = state, utcnow(), error
                if backup_id:
                    run.backup_id = backup_id

    def task_runs(self, task_id: str | None = None) -> list[TaskRun]:
        query = select(TaskRun).order_by(TaskRun.id)
        if task_id:
            query = query.where(TaskRun.task_id == task_id)
        with self.session() as s:
            return list(s.scalars(query))

    # Actions (audit trail of operator changes) ----------------------------------------------

    def record_action(
        self,
        action: str,
        target: str,
        actor: str,
        detail: dict[str, object] | None = None,
        backup_id: str | None = None,
        **fields: Any,
    ) -> int:
        """Append one audit record (hash-chained by lifeos_backup.audit.append, the one writer);
        `detail` is stored as JSON. `actor` is the initiator. Not rebuilt from manifests."""
        from lifeos_backup import audit

        return audit.append(
            self, action=action, target=target, initiator=actor, backup_id=backup_id,
            detail=detail, **fields,
        )  # fmt: skip

    def actions(self, action: str | None = None, target: str | None = None) -> list[Action]:
        """Audit records, oldest first; `action` matches a prefix (e.g. "flag.")."""
        query = select(Action).order_by(Action.id)
        if action:
            query = query.where(Action.action.startswith(action))
        if target:
            query = query.where(Action.target == target)
        with self.session() as s:
            return list(s.scalars(query))
