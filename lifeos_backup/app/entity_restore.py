"""Entity restore: bring back one accidentally deleted (or damaged) row from a PostgreSQL backup.

Instead of restoring a whole database over production, the table (and, with children, every table
referencing it by foreign key, found in the dump's table of contents) is restored from the backup
into a scratch database `<db>_entity_<timestamp>` on the same server. The row, and the rows that
reference it (recursively, as ON DELETE CASCADE would have removed them), are read there,
compared with production and shown. `apply` writes them back in ONE production transaction
(insert, or update where the row still exists) and records the action in the audit trail; when
production already holds every row as the backup has it, there is nothing to write and nothing is
recorded. The scratch database is always dropped, whatever happened. The tables are restored with
what they need (types, domains, functions, sequences...: postgres/tableplan.py).

Rows travel as PostgreSQL's own `to_jsonb` text and come back through `jsonb_populate_record`, so
every column type round-trips through its own input function without a Python conversion.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg import sql

from lifeos_backup.app import appdb
from lifeos_backup.core.errors import ConfigError, NotFound, PermanentError
from lifeos_backup.core.progress import ProgressFn, ignore
from lifeos_backup.core.settings import Settings
from lifeos_backup.formats.manifest import Manifest, read_manifest
from lifeos_backup.jobs.backups import locate
from lifeos_backup.kinds.postgres.check import read_entries
from lifeos_backup.kinds.postgres.conninfo import PgTarget
from lifeos_backup.kinds.postgres.restore import MAINTENANCE_DB, drop_database, restore_postgres
from lifeos_backup.kinds.postgres.toc import TocEntry
from lifeos_backup.kinds.postgres.tools import tool
from lifeos_backup.storage.catalog import Catalog
from lifeos_backup.storage.catalog.store import CREATED, VERIFIED

log = logging.getLogger(__name__)
MAX_DBNAME = 63  # PostgreSQL truncates longer identifiers silently: never let it


@dataclass(frozen=True)
class TableName:
    schema: str
    name: str

    @classmethod
    def parse(cls, text: str, default_schema: str = "public") -> TableName:
        appdb.check_table_name(text)
        schema, _, name = text.rpartition(".")
        return cls(schema or default_schema, name)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def __str__(self) -> str:
        return self.name if self.schema == "public" else self.qualified


@dataclass
class RowChange:
    """One row of the backup and what production has under the same primary key."""

    table: str
    key: dict[str, Any]
    backup: dict[str, Any]
    backup_json: str  # to_jsonb text, written back verbatim
    production: dict[str, Any] | None

    @property
    def status(self) -> str:
        if self.production is None:
            return "missing"  # deleted in production: insert
        return "same" if self.production == self.backup else "differs"  # differs: update

    @property
    def differences(self) -> dict[str, tuple[Any, Any]]:
        """column -> (production, backup) for the columns that differ."""
        if self.production is None:
            return {}
        return {
            c: (self.production.get(c), v)
            for c, v in self.backup.items()
            if self.production.get(c) != v
        }


@dataclass
class EntityRestore:
    """The outcome: which rows, their differences, whether they were written back."""

    backup_id: str
    table: str
    id: str
    with_children: bool
    scratch_database: str
    rows: list[RowChange] = field(default_factory=list)
    applied: bool = False
    action_id: int | None = None

    @property
    def nothing_to_change(self) -> bool:
        """Production already holds every row as the backup has it."""
        return all(row.status == "same" for row in self.rows)

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for row in self.rows:
            per = out.setdefault(row.table, {"missing": 0, "differs": 0, "same": 0})
            per[row.status] += 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "table": self.table,
            "id": self.id,
            "with_children": self.with_children,
            "scratch_database": self.scratch_database,
            "applied": self.applied,
            "nothing_to_change": self.nothing_to_change,
            "counts": self.counts(),
            "rows": [
                {
                    "table": r.table,
                    "key": r.key,
                    "status": r.status,
                    "backup": r.backup,
                    "production": r.production,
                    "differences": {c: list(v) for c, v in r.differences.items()},
                }
                for r in self.rows
            ],
        }


# The dump's table of contents: which tables reference which ------------------------------------


def _toc_table(entry: TocEntry) -> TableName:
    schema, name, *_ = entry.rest.split(" ")
    return TableName(schema, name)


def find_table(entries: Iterable[TocEntry], wanted: str) -> TableName:
    """The archive's table named `wanted` (`name` in any schema, or `schema.name`)."""
    tables = [_toc_table(e) for e in entries if e.desc == "TABLE"]
    target = TableName.parse(wanted)
    if "." in wanted:
        found = [t for t in tables if t == target]
    else:
        found = [t for t in tables if t.name == target.name]
    if len(found) == 1:
        return found[0]
    if not found:
        raise NotFound(
            f"table {wanted!r} is not in the backup",
            f"it has: {', '.join(sorted(map(str, tables)))[:500]}",
            "check the name; the table may not have existed when the backup was taken",
        )
    raise PermanentError(
        f"table name {wanted!r} is ambiguous in the backup",
        f"found in schemas: {', '.join(t.schema for t in found)}",
        "give it as schema.table",
    )


def referencing_tables(entries: list[TocEntry], root: TableName) -> list[TableName]:
    """Tables referencing `root` by foreign key, recursively (what a cascade reaches), from the
    dump's table of contents: an FK CONSTRAINT entry depends on both tables' TABLE entries."""
    by_id = {e.dump_id: _toc_table(e) for e in entries if e.desc == "TABLE"}
    edges: list[tuple[TableName, TableName]] = []  # (parent, child)
    for entry in entries:
        if entry.desc != "FK CONSTRAINT":
            continue
        child = _toc_table(entry)
        edges += [(by_id[d], child) for d in entry.deps if d in by_id and by_id[d] != child]
    found: list[TableName] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop(0)
        for p, child in edges:
            if p == parent and child != root and child not in found:
                found.append(child)
                frontier.append(child)
    return found


# Reading rows -----------------------------------------------------------------------------------

Conn = appdb.Conn


def _fetch(conn: Conn, table: str, where: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(to_jsonb text, parsed) of the rows of `table` whose columns equal `where`.

    The wanted values go through jsonb_populate_record, so each is converted by its column's own
    type (a text id for an integer key, a timestamp string for a timestamptz) and the comparison
    is a plain typed `=` that can use the table's index.
    """
    condition = sql.SQL(" AND ").join(
        sql.SQL("t.{0} = k.{0}").format(sql.Identifier(c)) for c in where
    )
    query = sql.SQL(
        "SELECT to_jsonb(t)::text FROM {table} AS t,"
        " jsonb_populate_record(NULL::{table}, %s::jsonb) AS k WHERE {condition} ORDER BY 1"
    ).format(table=appdb.ident(table), condition=condition)
    rows = conn.execute(query, (json.dumps(where),)).fetchall()
    return [(str(text), json.loads(str(text))) for (text,) in rows]


def collect_rows(
    scratch: Conn, table: TableName, id_value: str, children: list[TableName]
) -> tuple[list[tuple[str, dict[str, Any], str]], dict[str, list[str]]]:
    """The row and (recursively) the rows referencing it, read in the scratch database.

    Returns ([(table, row, row_json)], {table: primary key columns}). Foreign keys come from the
    scratch database's catalog: they were restored with the tables they link.
    """
    keys = {t.qualified: appdb.primary_key(scratch, t.qualified) for t in [table, *children]}
    root_key = keys[table.qualified]
    if len(root_key) != 1:
        raise PermanentError(
            f"{table} has {'no' if not root_key else 'a composite'} primary key",
            "--id names a row by a single-column primary key",
            "entity restore works on tables with a one-column primary key",
        )
    found = _fetch(scratch, table.qualified, {root_key[0]: id_value})
    if not found:
        raise NotFound(
            f"no row {root_key[0]} = {id_value!r} in {table} of the backup",
            hint="check the id, or pick an older backup (`lifeos-backup list --kind postgres`)",
        )
    wanted = {t.qualified for t in children}
    fks = [
        fk
        for fk in appdb.foreign_keys(scratch)
        if fk.child in wanted and fk.parent in wanted | {table.qualified}
    ]
    collected = [(table.qualified, found[0][1], found[0][0])]
    seen: set[tuple[str, tuple[Any, ...] | str]] = {(table.qualified, _key(found[0][1], root_key))}
    frontier = [(table.qualified, found[0][1])]
    while frontier:
        parent, row = frontier.pop(0)
        for fk in (f for f in fks if f.parent == parent):
            values = [row.get(c) for c in fk.parent_columns]
            if any(v is None for v in values):
                continue
            where = dict(zip(fk.child_columns, values, strict=True))
            for text, child in _fetch(scratch, fk.child, where):
                ident = (fk.child, _key(child, keys[fk.child]) or text)
                if ident not in seen:
                    seen.add(ident)
                    collected.append((fk.child, child, text))
                    frontier.append((fk.child, child))
    return collected, keys


def _key(row: dict[str, Any], columns: list[str]) -> tuple[Any, ...]:
    return tuple(json.dumps(row.get(c), sort_keys=True) for c in columns)


def compare(
    production: Conn, collected: list[tuple[str, dict[str, Any], str]], keys: dict[str, list[str]]
) -> list[RowChange]:
    """Each backup row beside production's row with the same primary key (None if deleted)."""
    for table in dict.fromkeys(t for t, _, _ in collected):
        appdb.require_table(production, table, "production")
        if not keys[table]:
            raise PermanentError(
                f"{table} has no primary key",
                "its rows cannot be matched with production's",
                "restore it without --with-children, or give the table a primary key",
            )
    changes = []
    for table, row, text in collected:
        key = {c: row[c] for c in keys[table]}
        existing = _fetch(production, table, key)
        changes.append(RowChange(table, key, row, text, existing[0][1] if existing else None))
    return changes


# Writing back -----------------------------------------------------------------------------------


def parents_first(tables: list[str], fks: list[appdb.ForeignKey]) -> list[str]:
    """Tables ordered so that a referenced table comes before the tables referencing it."""
    ordered: list[str] = []
    pending = list(dict.fromkeys(tables))
    while pending:
        ready = [
            t
            for t in pending
            if not any(fk.child == t and fk.parent in pending and fk.parent != t for fk in fks)
        ]
        ready = ready or pending[:1]  # a cycle: its order is up to deferred constraints
        ordered += ready
        pending = [t for t in pending if t not in ready]
    return ordered


def _upsert(conn: Conn, change: RowChange, key: list[str], writable: list[str]) -> None:
    """INSERT the backup's row, or UPDATE the row with its key to the backup's values."""
    columns = [c for c in writable if c in change.backup]
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    updates = [c for c in columns if c not in key]
    on_conflict = (
        sql.SQL("DO UPDATE SET ")
        + sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in updates
        )
        if updates
        else sql.SQL("DO NOTHING")
    )
    statement = sql.SQL(
        "INSERT INTO {table} AS t ({names}) OVERRIDING SYSTEM VALUE"
        " SELECT {names} FROM jsonb_populate_record(NULL::{table}, %s::jsonb)"
        " ON CONFLICT ({key}) {on_conflict}"
    ).format(
        table=appdb.ident(change.table),
        names=names,
        key=sql.SQL(", ").join(map(sql.Identifier, key)),
        on_conflict=on_conflict,
    )
    conn.execute(statement, (change.backup_json,))


def _writable_columns(conn: Conn, table: str, changes: list[RowChange]) -> list[str]:
    """Production's insertable columns, refusing backup columns production no longer has."""
    present = set(appdb.columns(conn, table))
    unknown = sorted({c for ch in changes if ch.table == table for c in ch.backup} - present)
    if unknown:
        raise PermanentError(
            f"production's {table} has no column {', '.join(unknown)}",
            "its schema changed since the backup was taken",
            "restore the backup into a database of its own and move the row by hand",
        )
    return appdb.columns(conn, table, writable=True)


def _advance_sequences(conn: Conn, table: str) -> None:
    """A restored serial/identity value must not be handed out again by the sequence."""
    rows = conn.execute(
        "SELECT attname, pg_get_serial_sequence(%s, attname) FROM pg_attribute"
        " WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
        (appdb.regclass(table), appdb.regclass(table)),
    ).fetchall()
    for column, sequence in rows:
        if sequence is None:
            continue
        conn.execute(
            sql.SQL(
                "SELECT setval(%s, GREATEST((SELECT max({col}) FROM {table}), nextval(%s)))"
            ).format(col=sql.Identifier(str(column)), table=appdb.ident(table)),
            (sequence, sequence),
        )


def apply_changes(
    production: Conn, changes: list[RowChange], keys: dict[str, list[str]]
) -> dict[str, dict[str, int]]:
    """Write every missing or differing row back in ONE transaction; counts per table."""
    fks = appdb.foreign_keys(production)
    order = parents_first([c.table for c in changes], fks)
    done: dict[str, dict[str, int]] = {t: {"inserted": 0, "updated": 0} for t in order}
    with production.transaction():
        production.execute("SET CONSTRAINTS ALL DEFERRED")
        for table in order:
            writable = _writable_columns(production, table, changes)
            for change in (c for c in changes if c.table == table and c.status != "same"):
                _upsert(production, change, keys[table], writable)
                done[table]["inserted" if change.status == "missing" else "updated"] += 1
            if done[table]["inserted"]:
                _advance_sequences(production, table)
    return done


# The whole operation ----------------------------------------------------------------------------


def scratch_name(database: str, now: datetime | None = None) -> str:
    """`<db>_entity_<YYYYMMDD_HHMMSS>`, shortening <db> to fit PostgreSQL's 63 bytes."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d_%H%M%S")
    suffix = f"_entity_{stamp}"
    base = database.encode()[: MAX_DBNAME - len(suffix)].decode(errors="ignore")
    return base + suffix


def postgres_backup(settings: Settings, catalog: Catalog, backup_id: str) -> tuple[Path, Manifest]:
    """Archive and manifest of a PostgreSQL backup that may be restored from."""
    row, archive, mpath = locate(settings, catalog, backup_id)
    if row.kind != "postgres":
        raise ConfigError(
            f"backup {backup_id} is a {row.kind} backup",
            hint="entity restore needs a postgres backup: `lifeos-backup list --kind postgres`",
        )
    if row.status not in (VERIFIED, CREATED):
        raise PermanentError(f"backup {backup_id} is {row.status}", hint="choose a verified backup")
    return archive, read_manifest(mpath)


def restore_into_scratch(
    settings: Settings,
    archive: Path,
    manifest: Manifest,
    scratch: str,
    tables: list[TableName],
    progress: ProgressFn,
) -> None:
    """The postgres kind's selective restore into a new database; counts must match."""
    report = restore_postgres(
        archive,
        manifest,
        settings,
        scratch,
        create=True,
        jobs=1,  # a few small tables: one pg_restore at a time is enough
        tables=[t.qualified for t in tables],
        progress=progress,
    )
    if report.differences:
        raise PermanentError(
            "the restored tables do not hold the rows the backup counted",
            ", ".join(f"{c.table}: {c.restored} of {c.expected}" for c in report.differences),
            "the backup is not good for this; choose another one",
        )


def restore_entity(
    settings: Settings,
    catalog: Catalog,
    backup_id: str,
    table: str,
    id_value: str,
    *,
    with_children: bool = False,
    apply: bool = False,
    actor: str = "operator",
    progress: ProgressFn = ignore,
) -> EntityRestore:
    """Show (and with `apply` write back) one row and its children from a PostgreSQL backup.

    The scratch database is dropped in every case; the production transaction is the only write,
    and it is skipped (no audit record either) when production already holds every row as the
    backup has it: an action that changed nothing must not read as a restore in the trail.
    """
    archive, manifest = postgres_backup(settings, catalog, backup_id)
    entries = read_entries(archive, manifest, tool(settings, "pg_restore"), progress)
    root = find_table(entries, table)
    children = referencing_tables(entries, root) if with_children else []
    target = appdb.production(settings)
    with appdb.connect(target, autocommit=True) as production:
        scratch = scratch_name(production.info.dbname)
        result = EntityRestore(backup_id, str(root), id_value, with_children, scratch)
        try:
            restore_into_scratch(settings, archive, manifest, scratch, [root, *children], progress)
            with appdb.connect(target.with_database(scratch), autocommit=True) as conn:
                collected, keys = collect_rows(conn, root, id_value, children)
            result.rows = compare(production, collected, keys)
            if apply and not result.nothing_to_change:
                written = apply_changes(production, result.rows, keys)
                result.applied = True
                result.action_id = catalog.record_action(
                    "entity.restore",
                    f"{root}:{id_value}",
                    actor,
                    {"with_children": with_children, "written": written, "scratch": scratch},
                    backup_id=backup_id,
                )
        except BaseException:
            drop_scratch(target, scratch, quiet=True)  # the first error is the one to report
            raise
        drop_scratch(target, scratch)
    return result


def drop_scratch(target: PgTarget, name: str, *, quiet: bool = False) -> None:
    """Drop the scratch database (the postgres kind's drop, WITH FORCE) and make sure it is gone.

    `quiet`: another error is already on its way, so a leftover is only logged, with its name.
    """
    drop_database(target.with_database(name))  # best effort: logs a warning on failure
    try:
        with appdb.connect(target.with_database(MAINTENANCE_DB), autocommit=True) as admin:
            query = "SELECT 1 FROM pg_database WHERE datname = %s"
            left = admin.execute(query, (name,)).fetchone() is not None
    except Exception:
        if not quiet:
            raise
        left = True
    if not left:
        return
    if quiet:
        log.error("scratch database %s may be left over; drop it by hand", name)
        return
    raise PermanentError(
        f"could not drop the scratch database {name}",
        "the restore itself finished",
        f"drop it by hand: DROP DATABASE {name}",
    )
