"""What a restore target already has, asked per table-of-contents entry, and how what it keeps
compares with the backup.

A table restore brings the objects its tables need only when the target lacks them
(tableplan.py); what the target has is kept, never dropped or replaced. Names come from the
table of contents (schema, name, a function's argument types as pg_dump formatted them) and are
looked up in the catalogs as values, never spliced into SQL. Kinds without a question here
(operators, casts, text search objects) count as missing: they are restored, and a target that
has one already makes pg_restore fail with "already exists", naming it.

Of the kept objects, enums and sequences are compared with the backup's, where a difference
matters for the restored rows: an enum without one of the backup's labels cannot load them (and
another order sorts them differently), and a sequence behind the restored values hands them out
again.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from lifeos_backup.core import procs
from lifeos_backup.kinds.postgres.toc import TocEntry, use_list
from lifeos_backup.kinds.postgres.tools import Tool

_TYPE = (
    "SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
    " WHERE n.nspname = %(schema)s AND t.typname = %(name)s"
)
_RELATION = (
    "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = %(schema)s AND c.relname = %(name)s"
)
_ROUTINE = (
    "SELECT 1 WHERE to_regprocedure(quote_ident(%(schema)s) || '.' || quote_ident(%(name)s)"
    " || %(args)s) IS NOT NULL"
)
_QUERIES = {
    "SCHEMA": "SELECT 1 FROM pg_namespace WHERE nspname = %(name)s",
    "EXTENSION": "SELECT 1 FROM pg_extension WHERE extname = %(name)s",
    "TYPE": _TYPE,
    "SHELL TYPE": _TYPE,
    "DOMAIN": _TYPE,
    "COLLATION": (
        "SELECT 1 FROM pg_collation c JOIN pg_namespace n ON n.oid = c.collnamespace"
        " WHERE n.nspname = %(schema)s AND c.collname = %(name)s"
    ),
    "FUNCTION": _ROUTINE,
    "PROCEDURE": _ROUTINE,
    "AGGREGATE": _ROUTINE,
    "SEQUENCE": _RELATION + " AND c.relkind = 'S'",
    "TABLE": _RELATION + " AND c.relkind IN ('r', 'p')",
    "VIEW": _RELATION + " AND c.relkind = 'v'",
    "MATERIALIZED VIEW": _RELATION + " AND c.relkind = 'm'",
    "FOREIGN TABLE": _RELATION + " AND c.relkind = 'f'",
}
# Entries that create a relation, whose name a target may already use for something.
_CREATES_RELATION = frozenset({"TABLE", "SEQUENCE", "INDEX"})

# pg_dump writes an enum's labels one per line: "CREATE TYPE s.t AS ENUM (\n    'a',\n    'b'\n);"
_ENUM = re.compile(r"^CREATE TYPE ([^\n]+?) AS ENUM \(((?:\n    '(?:[^']|'')*',?)*)\n\);$", re.M)
_LITERAL = re.compile(r"'((?:[^']|'')*)'")
_SETVAL = re.compile(r"SELECT pg_catalog\.setval\('((?:[^']|'')*)', (-?\d+), (true|false)\);")

Conn = psycopg.Connection[tuple[Any, ...]]


class Presence:
    """`presence(entry)`: whether the target (one autocommit connection) has the object of
    `entry`; each entry is asked once."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.known: dict[int, bool] = {}

    def __call__(self, entry: TocEntry) -> bool:
        if entry.dump_id not in self.known:
            self.known[entry.dump_id] = self._ask(entry)
        return self.known[entry.dump_id]

    def _ask(self, entry: TocEntry) -> bool:
        query = _QUERIES.get(entry.desc)
        if query is None:
            return False
        name, paren, args = entry.tag.partition("(")
        params = {"schema": entry.schema, "name": name, "args": paren + args}
        try:
            return self.conn.execute(query, params).fetchone() is not None
        except psycopg.Error:  # to_regprocedure of PostgreSQL < 16 raises on an unknown type
            return False


def name_taken(conn: Conn, entries: Sequence[TocEntry]) -> list[str]:
    """The relations `entries` would create (tables, sequences, indexes) whose schema.name the
    target already uses."""
    taken = []
    for entry in entries:
        if entry.desc not in _CREATES_RELATION:
            continue
        params = {"schema": entry.schema, "name": entry.tag}
        if conn.execute(_RELATION, params).fetchone() is not None:
            taken.append(entry.label)
    return taken


def kept_differences(
    pg_restore: Tool, head: Path, toc: Sequence[TocEntry], kept: Sequence[TocEntry], work: Path,
    conn: Conn,
) -> list[str]:
    """One line per kept enum whose labels, or kept sequence whose value, differ from the
    backup's. The backup's side is what pg_restore would run for them (`--file=-`)."""
    sequences = {e.dump_id for e in kept if e.desc == "SEQUENCE"}
    asked = [
        e
        for e in toc
        if (e.desc == "TYPE" and e in kept)
        or (e.desc == "SEQUENCE SET" and sequences.intersection(e.deps))
    ]
    if not asked:
        return []
    listed = work / "kept.txt"
    listed.write_text(use_list(asked))
    script = procs.run(
        [pg_restore.path, f"--use-list={listed}", "--file=-", str(head)],
        capture_stdout=True, stdin=subprocess.DEVNULL,
    ).stdout or b""
    text = script.decode(errors="replace")
    return _enum_differences(conn, text) + _sequence_differences(conn, text)


def _enum_differences(conn: Conn, script: str) -> list[str]:
    lines = []
    for match in _ENUM.finditer(script):
        name = match.group(1)
        ours = [label.replace("''", "'") for label in _LITERAL.findall(match.group(2))]
        row = conn.execute(
            "SELECT array_agg(enumlabel::text ORDER BY enumsortorder) FROM pg_enum"
            " WHERE enumtypid = to_regtype(%s)",
            (name,),
        ).fetchone()
        theirs = list(row[0] or []) if row else []
        if theirs != ours:
            lines.append(
                f"kept the target's type {name} as it is, which differs from the backup's: "
                f"labels {', '.join(theirs)} in the target, {', '.join(ours)} in the backup"
            )
    return lines


def _sequence_differences(conn: Conn, script: str) -> list[str]:
    lines = []
    for name, value, called in _SETVAL.findall(script):
        name = name.replace("''", "'")
        ours = int(value) if called == "true" else None
        row = conn.execute("SELECT pg_sequence_last_value(to_regclass(%s))", (name,)).fetchone()
        theirs = row[0] if row else None
        if theirs != ours:
            lines.append(
                f"kept the target's sequence {name} as it is: last value {_position(theirs)} "
                f"in the target, {_position(ours)} in the backup"
            )
    return lines


def _position(value: int | None) -> str:
    return "none yet" if value is None else str(value)
