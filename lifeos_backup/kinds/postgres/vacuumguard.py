"""Keeping autovacuum off a table from its first slice until its own index build.

A sliced table's COPYs commit one by one, so autovacuum sees the table fill up and starts a VACUUM
on it while the other slices still load; the table's index build then waits deadlock_timeout (1 s
by default) until the server cancels that VACUUM, and the VACUUM's work is lost (measured:
docs/decisions.md, "PostgreSQL dump format"). Autovacuum skips a table it cannot lock at once, and
SHARE UPDATE EXCLUSIVE, its own lock mode, does not conflict with COPY's ROW EXCLUSIVE: a connection
holding it keeps autovacuum away without slowing the load. It is released just before the index
build (which needs a lock that conflicts with it); a dropped connection releases it too, so a killed
restore leaves nothing behind. Autovacuum comes back on its next round, after the restore.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import psycopg
from psycopg import sql

from lifeos_backup.core.errors import LifeosError
from lifeos_backup.kinds.postgres.connect import connect, one_line
from lifeos_backup.kinds.postgres.conninfo import PgTarget

log = logging.getLogger(__name__)

Table = tuple[str, str]
LOCK_TIMEOUT = "200ms"  # a table someone else holds (a manual VACUUM) is loaded unguarded


class VacuumGuards:
    """One connection per guarded table, each holding SHARE UPDATE EXCLUSIVE in an open
    transaction that never takes a snapshot for long nor an xid (so it holds back no cleanup)."""

    def __init__(self, target: PgTarget) -> None:
        self._target = target
        self._held: dict[Table, psycopg.Connection[tuple] | None] = {}
        self._lock = threading.Lock()

    def hold(self, table: Table) -> None:
        """Lock `table` against autovacuum, once; best effort (the guard only saves time, so a
        table it cannot lock within LOCK_TIMEOUT is loaded without it, as without the guard)."""
        with self._lock:
            if table not in self._held:
                self._held[table] = self._lock_table(table)

    def _lock_table(self, table: Table) -> psycopg.Connection[tuple] | None:
        try:
            conn = connect(self._target)
        except LifeosError as exc:
            log.info("no autovacuum guard for %s.%s: %s", *table, exc)
            return None
        try:
            conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
            conn.execute(
                sql.SQL("LOCK TABLE ONLY {} IN SHARE UPDATE EXCLUSIVE MODE").format(
                    sql.Identifier(*table)
                )
            )
        except psycopg.Error as exc:
            log.info("no autovacuum guard for %s.%s: %s", *table, one_line(str(exc)))
            conn.close()
            return None
        return conn

    def release(self, table: Table) -> None:
        """Let autovacuum (and the table's index build) at `table` again."""
        with self._lock:
            conn = self._held.pop(table, None)
        if conn is not None:
            with contextlib.suppress(psycopg.Error):  # a lost connection has released it too
                conn.close()  # the transaction ends with it: the lock goes

    def release_all(self) -> None:
        """At the end of the data phase, or after a failure: nothing stays locked."""
        with self._lock:
            tables = list(self._held)
        for table in tables:
            self.release(table)
