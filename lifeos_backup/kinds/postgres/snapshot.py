"""The facts a restore is checked against, taken in exactly the snapshot that pg_dump dumps.

A REPEATABLE READ transaction exports its snapshot (`pg_export_snapshot()`); pg_dump imports it
with `--snapshot`, so the row counts counted here in that transaction are the rows in the archive,
even while the app keeps writing. The transaction must stay open until pg_dump has imported the
snapshot; `exported_snapshot` keeps it open for the whole dump.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import IsolationLevel, sql

# User schemas only (no system catalogs, temporary or TOAST schemas), and no objects that belong
# to an extension: CREATE EXTENSION recreates those, pg_dump does not dump them.
_RELATIONS = """
    SELECT n.nspname, c.relname, pg_table_size(c.oid)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = %s AND c.relpersistence <> 't'
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                      AND d.objid = c.oid AND d.deptype = 'e')
    ORDER BY 1, 2
"""
_SCHEMAS = """
    SELECT n.nspname FROM pg_namespace n
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
    ORDER BY 1
"""
_DATABASE = (
    "SELECT current_database(), current_setting('server_version'),"
    " current_setting('server_version_num')::int, pg_database_size(current_database()),"
    " pg_encoding_to_char(d.encoding), d.datcollate, d.datctype"
    " FROM pg_database d WHERE d.datname = current_database()"
)


@dataclass
class TableFact:
    """One ordinary table, its exact row count in the snapshot and its size on disk.

    The size (heap and TOAST, not MVCC: as the server sees it now) only balances the dump parts.
    """

    schema: str
    name: str
    bytes: int = 0
    rows: int = 0

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class DatabaseFacts:
    """What the manifest records about the dumped database (all from one snapshot)."""

    database: str
    server_version: str
    server_version_num: int
    database_size: int
    encoding: str
    collate: str
    ctype: str
    schemas: list[str] = field(default_factory=list)
    tables: list[TableFact] = field(default_factory=list)
    sequences: list[str] = field(default_factory=list)

    def as_facts(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def exported_snapshot(conn: psycopg.Connection[tuple]) -> Iterator[str]:
    """Open a read-only REPEATABLE READ transaction and yield its exported snapshot id."""
    conn.isolation_level = IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    try:
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        yield str(row[0])
    finally:
        if not conn.closed:
            conn.rollback()


def catalog_facts(conn: psycopg.Connection[tuple]) -> DatabaseFacts:
    """Server version, size, encoding and the schemas/tables/sequences, in the open snapshot."""
    row = conn.execute(_DATABASE).fetchone()
    assert row is not None
    facts = DatabaseFacts(*row)
    facts.schemas = [name for (name,) in conn.execute(_SCHEMAS)]
    facts.tables = [TableFact(s, n, size) for s, n, size in conn.execute(_RELATIONS, ("r",))]
    facts.sequences = [f"{s}.{n}" for s, n, _ in conn.execute(_RELATIONS, ("S",))]
    return facts


def count_rows(conn: psycopg.Connection[tuple], schema: str, name: str) -> int:
    """Exact `count(*)` of one table; ONLY, because pg_dump dumps inheritance children apart."""
    query = sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(
        sql.Identifier(schema), sql.Identifier(name)
    )
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def count_all(conn: psycopg.Connection[tuple], tables: list[TableFact]) -> None:
    """Fill in the row count of every table."""
    for table in tables:
        table.rows = count_rows(conn, table.schema, table.name)
