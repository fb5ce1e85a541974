"""Reads and writes of the catalog; every status change of a backup goes through here.

The catalog is an index, not the truth: `rebuild` recreates it from the manifests on disk.
"""

from __future__ import annotations

import builtins
import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import URL, Engine, create_engine, event, make_url, select, text
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from lifeos_backup.core.errors import NotFound
from lifeos_backup.core.fsutil import FILE_MODE
from lifeos_backup.storage.catalog import chain, generations
from lifeos_backup.storage.catalog.models import Action, Backup, TaskRun
from lifeos_backup.storage.catalog.schema import (  # noqa: F401  (importers find them here too)
    CREATED,
    DELETED,
    DELETING,
    FAILED,
    HEAD,
    INCOMPLETE,
    RUNNING,
    STATUSES,
    UNVERIFIED,
    VERIFIED,
    CatalogUnreadable,
    no_such_backup,
    unreadable_error,
    utcnow,
)

MIGRATIONS = Path(__file__).with_name("migrations")
_OPEN: dict[str, Catalog] = {}
log = logging.getLogger(__name__)
logging.getLogger("alembic").setLevel(logging.WARNING)  # "Context impl SQLiteImpl" on every open


def _sqlite_pragmas(dbapi_conn, _record) -> None:
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


def sqlite_file(url: str) -> Path | None:
    """The configured file of an SQLite catalog URL; None for other databases, in-memory ones
    and `file:` URIs (those are opened exactly as given)."""
    parsed = make_url(_with_driver(url))
    if parsed.get_backend_name() != "sqlite":
        return None
    db = parsed.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(os.path.abspath(db))


def _file_engine(path: Path) -> Engine:
    """An engine on exactly this file. `mode=rw`: SQLite never creates it here (generations
    makes files, 0600), so a generation set aside between resolving and opening fails to open
    instead of coming back as a new empty database at the old name."""
    url = URL.create(
        "sqlite+pysqlite",
        database=f"file:{quote(str(path))}",
        query={"mode": "rw", "uri": "true"},
    )
    engine = create_engine(url, future=True)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def unreadable(catalog_url: str, exc: Exception) -> CatalogUnreadable:
    """The one-line error for a catalog that cannot be read, with the way out."""
    detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    return unreadable_error(detail, embedded=sqlite_file(catalog_url) is not None)


class Catalog:
    """One catalog database; upgrades its own schema when opened.

    An SQLite catalog follows its configured path (lifeos_backup.storage.catalog.generations):
    before every session one `stat` checks that the path still leads to the file this object opened;
    if not (the catalog was rebuilt, replaced or deleted), the engine is disposed and the
    catalog reopened, so long-running workers move to a new catalog by themselves.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        # The configured SQLite path (a pointer or a plain file); None: nothing to follow.
        self.file_path: Path | None = sqlite_file(url)
        # The file SQLite has open: the current generation, or the plain file itself.
        self.database_file: Path | None = None
        self._identity: generations.Identity | None = None
        self._reopen = threading.Lock()
        self._connect()

    def _connect(self) -> None:
        try:
            if self.file_path is None:
                engine = create_engine(_with_driver(self.url), future=True)
                if engine.dialect.name == "sqlite":
                    event.listen(engine, "connect", _sqlite_pragmas)
            else:
                engine = self._open_file(self.file_path)
            self._engine = engine
            self._session = sessionmaker(engine, expire_on_commit=False)
            self.ensure_schema()
        except DBAPIError as exc:
            raise unreadable(self.url, exc) from exc

    def _open_file(self, configured: Path) -> Engine:
        """An engine on the file `configured` leads to now (made if missing), retried when that
        file is replaced between finding and opening it."""
        for _attempt in range(5):
            path = generations.resolve(configured)
            found = generations.identity(path)
            engine = _file_engine(path)
            try:
                engine.connect().close()
            except OperationalError:
                engine.dispose()
                if generations.identity(path) is None:  # set aside meanwhile: find it again
                    continue
                raise
            self.database_file, self._identity = path, found
            return engine
        raise CatalogUnreadable(
            f"the catalog {configured} keeps changing while it is opened",
            hint="wait for `lifeos-backup catalog rebuild` to finish, then try again",
        )

    def refresh(self) -> None:
        """Reopen when the configured path no longer leads to the file this object has open."""
        if self.file_path is None or generations.identity(self.file_path) == self._identity:
            return
        with self._reopen:
            if generations.identity(self.file_path) == self._identity:
                return  # another thread of this process reopened it already
            old = self._engine
            log.info("catalog %s leads to another file now: reopening", self.file_path)
            try:
                self._connect()
            finally:
                old.dispose()  # closes its idle connections; ones in use close when returned

    @property
    def engine(self) -> Engine:
        self.refresh()
        return self._engine

    def ensure_schema(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent, safe between processes)."""
        if self.revision() == HEAD:
            return
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self._migration_lock(), self._engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def revision(self) -> str | None:
        """The schema's Alembic revision; None for a new (empty) catalog."""
        try:
            with self._engine.connect() as conn:
                return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except (OperationalError, ProgrammingError):  # no alembic_version table yet
            return None

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        if self.file_path is None:
            yield
            return
        lock = self.file_path.with_suffix(".migrate.lock")
        fd = os.open(lock, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextmanager
    def session(self) -> Iterator[Session]:
        self.refresh()
        with self._session.begin() as session:
            yield session

    @contextmanager
    def write_transaction(self) -> Iterator[Session]:
        """A session that holds the backups table's write lock from its first statement, so
        rows read in it cannot change before it writes (compare-and-set, as the rebuild needs):
        SQLite's write lock, taken by a statement that writes nothing; on PostgreSQL a table
        lock that lets readers through."""
        with self.session() as s:
            if s.get_bind().dialect.name == "postgresql":
                s.execute(text("LOCK TABLE backups IN SHARE ROW EXCLUSIVE MODE"))
            else:
                s.execute(text("UPDATE backups SET id = id WHERE 0"))
            yield s

    # Backups -------------------------------------------------------------------------------

    def add_backup(self, backup: Backup) -> None:
        with self.session() as s:
            s.merge(backup)

    def get(self, backup_id: str) -> Backup:
        with self.session() as s:
            row = s.get(Backup, backup_id)
        if row is None:
            raise no_such_backup(backup_id)
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

    def by_task(self, task_id: str, kind: str) -> Backup | None:
        """The newest backup of `kind` the task `task_id` is (or was) responsible for."""
        query = (
            select(Backup)
            .where(Backup.task_id == task_id, Backup.kind == kind)
            .order_by(Backup.created_at.desc())
            .limit(1)
        )
        with self.session() as s:
            return s.scalars(query).first()

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

    def task_runs(self, task_id: str | None = None) -> builtins.list[TaskRun]:
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
        """Append one audit record (hash-chained by lifeos_backup.storage.catalog.chain.append, the
        one writer); `detail` is stored as JSON. `actor` is the initiator. Not rebuilt from
        manifests."""
        return chain.append(
            self, action=action, target=target, initiator=actor, backup_id=backup_id,
            detail=detail, **fields,
        )  # fmt: skip

    def actions(
        self, action: str | None = None, target: str | None = None
    ) -> builtins.list[Action]:
        """Audit records, oldest first; `action` matches a prefix (e.g. "flag.")."""
        query = select(Action).order_by(Action.id)
        if action:
            query = query.where(Action.action.startswith(action))
        if target:
            query = query.where(Action.target == target)
        with self.session() as s:
            return list(s.scalars(query))
