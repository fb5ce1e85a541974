"""Connections to the app's PostgreSQL database and the catalog questions asked of it.

Rollback to JSON and entity restore read the app's tables generically (the entity list is
configuration), so they need the same few facts about any table: does it exist, its primary key,
its columns, who references it. They live here once, with psycopg errors turned into ours.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from lifeos_backup.core.errors import ConfigError, PermanentError
from lifeos_backup.core.settings import Settings
from lifeos_backup.kinds.postgres.connect import connect as pg_connect
from lifeos_backup.kinds.postgres.conninfo import PgTarget

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?")


Conn = psycopg.Connection[tuple[Any, ...]]


def production(settings: Settings) -> PgTarget:
    """The app's database: LIFEOS_DATABASE_URL, else libpq's PG* variables and .pgpass."""
    return PgTarget.from_settings(settings)


@contextmanager
def connect(target: PgTarget, *, autocommit: bool = False) -> Iterator[Conn]:
    """A connection in UTC, so timestamps render with +00:00; login failures are classified
    (unreachable: retryable; bad login or missing database: permanent) by the postgres kind."""
    conn = pg_connect(target, autocommit=autocommit)
    with conn:
        conn.execute("SET TIME ZONE 'UTC'")
        if not autocommit:
            conn.commit()  # the SET must not open the transaction whose isolation we choose next
        yield conn


def check_table_name(name: str) -> str:
    """Table names come from settings and the command line: plain identifiers, maybe schema."""
    if not NAME_RE.fullmatch(name):
        raise ConfigError(
            f"invalid table name {name!r}", hint="use a plain name or schema.name (no quotes)"
        )
    return name


def ident(table: str) -> sql.Composable:
    """`schema.table` or `table` as a quoted SQL identifier."""
    return sql.Identifier(*check_table_name(table).split("."))


def regclass(table: str) -> str:
    """The text to_regclass() resolves to the same table that `ident` quotes (case kept)."""
    return ".".join(f'"{part}"' for part in check_table_name(table).split("."))


@dataclass(frozen=True)
class ForeignKey:
    """`child(child_columns)` references `parent(parent_columns)`."""

    child: str
    child_columns: tuple[str, ...]
    parent: str
    parent_columns: tuple[str, ...]
    on_delete: str  # cascade / set null / set default / restrict / no action


def table_oid(conn: Conn, table: str) -> int | None:
    row = conn.execute("SELECT to_regclass(%s)::oid", (regclass(table),)).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def require_table(conn: Conn, table: str, where: str) -> int:
    """The table's oid, or a clear error naming the database it is missing from."""
    oid = table_oid(conn, table)
    if oid is None:
        raise PermanentError(
            f"table {table!r} does not exist in {where}",
            hint="check the table name (and LIFEOS_ROLLBACK_ENTITIES for rollbacks)",
        )
    return oid


def primary_key(conn: Conn, table: str) -> list[str]:
    """Primary key columns in key order; [] if the table has none."""
    rows = conn.execute(
        """
        SELECT a.attname FROM pg_index i
        CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = to_regclass(%s) AND i.indisprimary
        ORDER BY k.n
        """,
        (regclass(table),),
    ).fetchall()
    return [str(r[0]) for r in rows]


def columns(conn: Conn, table: str, *, writable: bool = False) -> list[str]:
    """The table's columns in order; `writable`: only those an INSERT may set (not GENERATED
    ... STORED)."""
    rows = conn.execute(
        """
        SELECT attname FROM pg_attribute
        WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped
          AND (NOT %s OR attgenerated = '')
        ORDER BY attnum
        """,
        (regclass(table), writable),
    ).fetchall()
    return [str(r[0]) for r in rows]


def foreign_keys(conn: Conn) -> list[ForeignKey]:
    """Every foreign key of the database, tables named schema.table."""
    actions = {
        "a": "no action",
        "r": "restrict",
        "c": "cascade",
        "n": "set null",
        "d": "set default",
    }
    rows = conn.execute(
        """
        SELECT cn.nspname || '.' || cc.relname, pn.nspname || '.' || pc.relname, c.confdeltype,
               ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, o)
                     JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n
                     ORDER BY k.o)::text[],
               ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(n, o)
                     JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n
                     ORDER BY k.o)::text[]
        FROM pg_constraint c
        JOIN pg_class cc ON cc.oid = c.conrelid JOIN pg_namespace cn ON cn.oid = cc.relnamespace
        JOIN pg_class pc ON pc.oid = c.confrelid JOIN pg_namespace pn ON pn.oid = pc.relnamespace
        WHERE c.contype = 'f' ORDER BY c.conname
        """
    ).fetchall()
    return [
        ForeignKey(
            str(child), tuple(child_cols), str(parent), tuple(parent_cols), actions[str(kind)]
        )
        for child, parent, kind, child_cols, parent_cols in rows
    ]
