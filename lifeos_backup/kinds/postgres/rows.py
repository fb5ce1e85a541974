"""Big tables as COPY slices: dumped side by side, restored side by side.

pg_dump reads a table with one server process and pg_restore loads it with one; when one table
holds most of the data (pgbench_accounts: 80 %), that table alone is the critical path of both.
So every table bigger than `FLOOR` is cut into slices of its pages, each dumped by psql in the
exported snapshot (`\\copy (SELECT cols FROM ONLY t WHERE ctid >= '(a,0)' AND ctid < '(b,0)')`,
a TID range scan) and restored by its own `COPY t (cols) FROM STDIN`, several at once into the
same table. COPY's binary format when every column has a built-in type with binary I/O (the
server parses about a fifth less), its text format otherwise (extension and user types keep
their text form across versions); a char(n) column's trailing blanks are left out of binary
slices, as COPY FROM pads them back (pgbench_accounts: 588 MB of its 800 MB are the blanks of
`filler char(84)`, which the server also counts character by character on input). psql
reports the rows it copied (`ROW_COUNT`), so the exact row count comes with the data, counted
by the server, instead of from a `count(*)` of its own.
Everything else (definitions, small tables, sequence values, large objects) stays in pg_dump's
part. docs/decisions.md has the measurements.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

FLOOR = 16 << 20  # smaller tables stay in pg_dump's part: a slice costs a connection
SLICE_MIN = 64 << 20  # no slice smaller than this, however many jobs
TID_RANGE_SCANS = 140000  # PostgreSQL 14: `ctid >= ... AND ctid < ...` reads only those pages
BYTEA_RTRIM = 140000  # PostgreSQL 14: rtrim(bytea, bytea)

# What pg_dump sets before it reads data, so that COPY's text is the same as in its own archives
# (dates, intervals, floats exact; names schema-qualified); the restore sets the same to read it.
SESSION = (
    "SET datestyle = ISO; SET intervalstyle = postgres; SET extra_float_digits = 3;"
    " SET statement_timeout = 0; SET lock_timeout = 0;"
    " SET idle_in_transaction_session_timeout = 0; SET row_security = off;"
    " SET search_path = pg_catalog"
)

# Ordinary tables without row security (pg_dump handles the rest): their pages, the columns
# COPY reads and writes (no dropped or generated ones) in the table's order, and whether every
# column's type is built in (oid below FirstNormalObjectId) with binary send and receive
# functions, its elements' too for an array; and its char(n) columns (padded to n on input).
_CANDIDATES = """
    SELECT n.nspname, c.relname,
           pg_relation_size(c.oid) / current_setting('block_size')::int,
           array_agg(a.attname ORDER BY a.attnum),
           bool_and(t.oid < 16384 AND t.typsend <> 0 AND t.typreceive <> 0
                    AND coalesce(e.typsend <> 0 AND e.typreceive <> 0, true)),
           array_agg(a.attname ORDER BY a.attnum)
               FILTER (WHERE t.oid = 'pg_catalog.bpchar'::pg_catalog.regtype AND a.atttypmod >= 4)
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                       AND a.attgenerated = ''
    JOIN pg_type t ON t.oid = a.atttypid
    LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typelem <> 0
    WHERE c.relkind = 'r' AND NOT c.relrowsecurity
    GROUP BY n.nspname, c.relname, c.oid
"""
ROWS_MARK = "lifeos-rows"  # psql's report of the rows it copied, on its stderr
_ROWS_RE = re.compile(ROWS_MARK + r" (\d+)")


@dataclass
class Slice:
    """Pages [first_page, end_page) of one table (end_page None: to the table's end) in COPY's
    `format` (binary or text; archives before binary slices are all text); `rows` is filled in
    from the server's count when the slice has been dumped."""

    schema: str
    name: str
    columns: list[str]
    first_page: int
    end_page: int | None
    rows: int = 0
    format: str = "text"
    trimmed: list[str] = field(default_factory=list)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def copy_out(self) -> str:
        """psql's `\\copy` that dumps this slice to its stdout (in the exported snapshot).

        `\\copy` to a file name, unlike COPY TO STDOUT, sets psql's ROW_COUNT.
        """
        where = [f"ctid >= '({self.first_page},0)'"] if self.first_page else []
        if self.end_page is not None:
            where.append(f"ctid < '({self.end_page},0)'")
        query = sql.SQL("\\copy (SELECT {} FROM ONLY {}.{}{}) TO '/dev/stdout' (FORMAT {})").format(
            sql.SQL(", ").join(map(self._output, self.columns)),
            sql.Identifier(self.schema),
            sql.Identifier(self.name),
            sql.SQL(" WHERE " + " AND ".join(where) if where else ""),
            sql.SQL(self.format),
        )
        return query.as_string(None)

    def _output(self, column: str) -> sql.Composable:
        """A column as dumped. A `trimmed` char(n) column of a binary slice goes without its
        trailing blanks, which COPY FROM puts back (char(n) pads every value to n characters on
        input): as bytea, whose binary form is the value's bytes, as char(n)'s is."""
        if column not in self.trimmed:
            return sql.Identifier(column)
        return sql.SQL("pg_catalog.rtrim(pg_catalog.bpcharsend({}), ' '::pg_catalog.bytea)").format(
            sql.Identifier(column)
        )

    def copy_in(self) -> sql.Composed:
        """The COPY that restores it."""
        return sql.SQL("COPY {}.{} ({}) FROM STDIN (FORMAT {})").format(
            sql.Identifier(self.schema),
            sql.Identifier(self.name),
            sql.SQL(", ").join(map(sql.Identifier, self.columns)),
            sql.SQL(self.format),
        )


@dataclass
class Candidate:
    """A table that may be dumped as slices: its size on disk, pages and COPY columns."""

    schema: str
    name: str
    bytes: int
    pages: int
    columns: list[str] = field(default_factory=list)
    binary: bool = False
    padded: list[str] = field(default_factory=list)


def candidates(conn: psycopg.Connection[tuple], sizes: dict[str, int]) -> list[Candidate]:
    """The tables (among `sizes`, schema.name -> bytes) COPY slices can carry, in the snapshot.

    A name with a line break stays with pg_dump: psql's `\\copy` must fit on one line.
    """
    found = []
    for schema, name, pages, columns, binary, padded in conn.execute(_CANDIDATES):
        size = sizes.get(f"{schema}.{name}")
        names = [schema, name, *(columns or [])]
        if size is None or not columns or any("\n" in n or "\r" in n for n in names):
            continue
        found.append(
            Candidate(
                schema, name, size, int(pages), list(columns), bool(binary), list(padded or [])
            )
        )
    return found


def reported_rows(stderr: str) -> int | None:
    """The rows psql said it copied (dump_args has it print them), None if it said nothing."""
    found = _ROWS_RE.findall(stderr)
    return int(found[-1]) if found else None


def plan_slices(tables: Sequence[Candidate], jobs: int, server_version_num: int) -> list[Slice]:
    """Tables of FLOOR bytes or more, cut into slices of about equal pages, biggest first.

    A slice is about 1/(4 * jobs) of the sliced data (at least SLICE_MIN), so that `jobs`
    workers end close together; before PostgreSQL 14 a ctid range reads the whole table, so each
    table is then one slice.
    """
    big = [t for t in tables if t.bytes >= FLOOR]
    trim = server_version_num >= BYTEA_RTRIM
    target = max(SLICE_MIN, sum(t.bytes for t in big) / (4 * max(1, jobs)))
    slices: list[tuple[float, Slice]] = []
    for table in big:
        count = 1
        if server_version_num >= TID_RANGE_SCANS:
            count = max(1, min(math.ceil(table.bytes / target), table.pages))
        bounds = [table.pages * i // count for i in range(count)]
        for i, first in enumerate(bounds):
            end = bounds[i + 1] if i + 1 < count else None
            piece = Slice(
                table.schema, table.name, table.columns, first, end,
                format="binary" if table.binary else "text",
                trimmed=table.padded if trim and table.binary else [],
            )
            slices.append((table.bytes / count, piece))
    slices.sort(key=lambda item: (-item[0], item[1].qualified, item[1].first_page))
    return [piece for _, piece in slices]


def dump_args(psql: str, conninfo: str, snapshot: str, encoding: str, piece: Slice) -> list[str]:
    """psql's arguments for one slice: the snapshot's transaction, pg_dump's settings, COPY."""
    return [
        psql, "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1", f"--dbname={conninfo}",
        "-c", f"{SESSION}; SET client_encoding = {_literal(encoding)}",
        "-c", "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        "-c", f"SET TRANSACTION SNAPSHOT {_literal(snapshot)}",
        "-c", piece.copy_out(),
        "-c", f"\\warn {ROWS_MARK} :ROW_COUNT",
        "-c", "COMMIT",
    ]


def _literal(text: str) -> str:
    return sql.Literal(text).as_string(None)


def lock_tables(conn: psycopg.Connection[tuple], slices: Sequence[Slice]) -> None:
    """ACCESS SHARE on the sliced tables for the whole dump, as pg_dump takes on its own: no
    DROP or ALTER can change them between the snapshot and the last slice."""
    names = sorted({(s.schema, s.name) for s in slices})
    if names:
        tables = sql.SQL(", ").join(
            sql.SQL("ONLY {}.{}").format(sql.Identifier(s), sql.Identifier(n)) for s, n in names
        )
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(tables))
