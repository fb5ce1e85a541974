"""Rollback PostgreSQL -> JSON: export the app's entities into its JSON file layout under data/.

This is the way back if the app's move to PostgreSQL has to be undone: the app then reads its
JSON files again, so they must look exactly as the app writes them (see ../shared/lifeos/README.md):
one object per row keyed by column name, UTF-8, keys sorted, two-space indent, trailing newline,
timestamps ISO 8601 with a UTC offset, JSONB embedded, arrays as arrays. Rows are rendered by
PostgreSQL's own `to_jsonb` (in a UTC session), so every column type has one exact JSON form.

All tables are read in one REPEATABLE READ snapshot, streamed (a server-side cursor), and every
file is written atomically; files already equal are not rewritten, files without a row (orphans)
are reported and left alone: a rollback never deletes app data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from lifeos_backup.app import appdb
from lifeos_backup.core.errors import ConfigError, PermanentError
from lifeos_backup.core.fsutil import atomic_writer
from lifeos_backup.core.settings import Settings
from lifeos_backup.kinds.postgres.conninfo import PgTarget
from lifeos_backup.storage.catalog import Catalog
from lifeos_backup.storage.catalog.store import VERIFIED

SETTING = "LIFEOS_ROLLBACK_ENTITIES"
ROW_BATCH = 1000  # rows fetched per round trip of the server-side cursor
MAX_NAME = 250  # bytes; file systems allow 255 and we add ".json"


@dataclass(frozen=True)
class EntitySpec:
    """One entity type: rows of `table` become files `<folder>/<id>.json` under data/.

    `grouped`: all rows sharing the id column's value go into one file, as a list (favorites).
    """

    table: str
    folder: str
    id_column: str
    grouped: bool = False

    @property
    def name(self) -> str:
        return self.table


@dataclass
class EntityReport:
    """What the export did (or would do) to one entity type's folder."""

    entity_type: str
    folder: str
    rows: int = 0
    created: int = 0
    changed: int = 0
    unchanged: int = 0
    orphaned: int = 0
    orphans: list[str] = field(default_factory=list)


@dataclass
class RollbackReport:
    dry_run: bool
    data_dir: str
    entities: list[EntityReport]
    backup_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_entities(text: str) -> list[EntitySpec]:
    """`table:folder:id_column[,...]`, `id_column[]` meaning one list file per value."""
    specs: list[EntitySpec] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        parts = item.split(":")
        if len(parts) != 3 or not all(parts):
            raise ConfigError(
                f"{SETTING} is invalid",
                f"{item!r} is not table:folder:id_column",
                "e.g. characters:characters:character_id,favorites:favorites:user_id[]",
            )
        table, folder, column = parts
        grouped = column.endswith("[]")
        column = column.removesuffix("[]")
        appdb.check_table_name(table)
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*", folder):
            raise ConfigError(f"{SETTING}: invalid folder {folder!r}", hint="a relative path")
        specs.append(EntitySpec(table, folder, column, grouped))
    if len({s.name for s in specs}) != len(specs):
        raise ConfigError(f"{SETTING} names a table twice")
    return specs


def select_entities(specs: list[EntitySpec], wanted: Iterable[str] | None) -> list[EntitySpec]:
    """The specs named by --entity-type (all when none), or an error listing the valid names."""
    names = list(wanted or [])
    if not names:
        return specs
    by_name = {s.name: s for s in specs}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(
            f"unknown entity type {', '.join(map(repr, unknown))}",
            f"valid entity types: {', '.join(by_name)}",
            f"entity types are the tables of {SETTING}",
        )
    return [by_name[n] for n in dict.fromkeys(names)]


def render(document: Any) -> bytes:
    """The app's JSON file format, byte for byte."""
    text = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False)
    return text.encode("utf-8") + b"\n"


def file_name(entity: EntitySpec, value: object) -> str:
    """`<id>.json`, refusing ids that are not a plain file name (they would escape the folder)."""
    if value is None:
        raise PermanentError(
            f"{entity.table}.{entity.id_column} is NULL in a row",
            hint="the id column must be set on every row to name its file",
        )
    name = str(value)
    bad = name in ("", ".", "..") or "/" in name or "\x00" in name or name.startswith(".")
    if bad or len(name.encode()) > MAX_NAME:
        raise PermanentError(
            f"{entity.table}.{entity.id_column} value {name[:80]!r} cannot be a file name",
            "ids must be non-empty, not start with '.', contain no '/', fit in 250 bytes",
            "fix the row, or map the entity to another id column",
        )
    return f"{name}.json"


def existing_files(folder: Path) -> set[str]:
    """The entity files already there (`*.json`, not hidden: partial writes are hidden)."""
    if not folder.is_dir():
        return set()
    return {
        p.name
        for p in folder.iterdir()
        if p.suffix == ".json" and not p.name.startswith(".") and p.is_file()
    }


def _rows(conn: appdb.Conn, entity: EntitySpec) -> Iterator[tuple[object, Any]]:
    """(id value, row as JSON) ordered by id, then primary key, so list files are stable."""
    appdb.require_table(conn, entity.table, "the app database")
    order = [entity.id_column, *appdb.primary_key(conn, entity.table)]
    query = sql.SQL("SELECT t.{id}, to_jsonb(t) FROM {table} AS t ORDER BY {order}").format(
        id=sql.Identifier(entity.id_column),
        table=appdb.ident(entity.table),
        order=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in order),
    )
    if order == [entity.id_column] and entity.grouped:  # no key: any total order will do
        query = sql.SQL("{} , t::text").format(query)
    with conn.cursor(name=f"rollback_{entity.folder.replace('/', '_')}") as cursor:
        cursor.itersize = ROW_BATCH
        try:
            cursor.execute(query)
        except psycopg.errors.UndefinedColumn as exc:
            raise ConfigError(
                f"{entity.table} has no column {entity.id_column!r}", hint=f"fix {SETTING}"
            ) from exc
        yield from cursor


def _documents(conn: appdb.Conn, entity: EntitySpec) -> Iterator[tuple[str, Any, int]]:
    """(file name, document, rows in it): one row per file, or a list per id value."""
    last: str | None = None
    group: list[Any] = []
    for value, row in _rows(conn, entity):
        name = file_name(entity, value)
        if not entity.grouped:
            if name == last:
                raise PermanentError(
                    f"{entity.table}.{entity.id_column} is not unique ({name})",
                    hint=f"map the entity to a unique column, or add [] to group it ({SETTING})",
                )
            last = name
            yield name, row, 1
            continue
        if name != last and group:
            yield str(last), group, len(group)
            group = []
        last = name
        group.append(row)
    if group:
        yield str(last), group, len(group)


def export_entity(
    conn: appdb.Conn,
    entity: EntitySpec,
    data_dir: Path,
    dry_run: bool,
) -> EntityReport:
    """Write (or only classify) one entity type's files; never touches a file without a row."""
    folder = data_dir / entity.folder
    report = EntityReport(entity.name, entity.folder)
    before = existing_files(folder)
    for name, document, rows in _documents(conn, entity):
        report.rows += rows
        content = render(document)
        path = folder / name
        if name not in before:
            report.created += 1
        elif path.read_bytes() == content:
            report.unchanged += 1
            before.discard(name)
            continue
        else:
            report.changed += 1
        before.discard(name)
        if not dry_run:
            with atomic_writer(path) as handle:
                handle.write(content)
    report.orphans = sorted(before)
    report.orphaned = len(report.orphans)
    return report


def export_to_json(
    target: PgTarget, data_dir: Path, entities: list[EntitySpec], dry_run: bool
) -> list[EntityReport]:
    """Every entity from one consistent snapshot of the database."""
    with appdb.connect(target) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        reports = [export_entity(conn, entity, data_dir, dry_run) for entity in entities]
        conn.rollback()
    return reports


def require_verified(catalog: Catalog, backup_id: str) -> None:
    """--backup-first means a *verified* backup: the catalog must say so before any write."""
    status = catalog.get(backup_id).status
    if status != VERIFIED:
        raise PermanentError(
            f"backup {backup_id} is {status}, not verified",
            "nothing was written to the app's data folder",
            "look at `lifeos-backup show ID`, fix the backup, then run the rollback again",
        )


def rollback_to_json(
    settings: Settings,
    catalog: Catalog | None,
    *,
    entity_types: Iterable[str] | None = None,
    dry_run: bool = False,
    backup_id: str | None = None,
    actor: str = "operator",
) -> RollbackReport:
    """The whole rollback: check the entity types (and the backup), export, record the action."""
    entities = select_entities(parse_entities(settings.rollback_entities), entity_types)
    if backup_id is not None:
        if catalog is None:
            raise ConfigError("a backup id was given but no catalog to check it in")
        require_verified(catalog, backup_id)
    data_dir = settings.app_dir / "data"
    reports = export_to_json(appdb.production(settings), data_dir, entities, dry_run)
    report = RollbackReport(dry_run, str(data_dir), reports, backup_id)
    if catalog is not None and not dry_run:
        catalog.record_action(
            "rollback.to_json",
            str(data_dir),
            actor,
            {e.entity_type: _counts(e) for e in reports},
            backup_id=backup_id,
        )
    return report


def backup_first(settings: Settings, actor: str, timeout: float) -> str:
    """Run the JSON backup chain on the workers and wait until it is verified; its id."""
    from lifeos_backup.app.client import BackupFailed, make_app, request_backup

    app = make_app(settings.require_redis_url())
    try:
        ref = request_backup(
            "json", "before rollback-to-json", wait=True, timeout=timeout, app=app, initiator=actor
        )
    except BackupFailed as exc:
        raise PermanentError(
            "the JSON backup before the rollback did not verify",
            str(exc),
            "nothing was written; fix the backup (see `lifeos-backup list`) and run again",
        ) from None
    assert ref.backup_id is not None  # wait=True returns only with the verified id
    return ref.backup_id


def _counts(report: EntityReport) -> dict[str, int]:
    return {
        "created": report.created,
        "changed": report.changed,
        "unchanged": report.unchanged,
        "orphaned": report.orphaned,
    }
