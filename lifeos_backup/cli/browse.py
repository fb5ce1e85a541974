"""`ls`, `find` and `diff`: what is inside backups, read from their manifests (and, for a
PostgreSQL `diff`, from the archives' tables of contents).

The work is in lifeos_backup.jobs.browse; this module parses the options and prints. Long
listings are printed as they are read (a JSON backup may hold a million files).
"""

from __future__ import annotations

import json
import stat
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lifeos_backup.cli.audit import check_since
from lifeos_backup.cli.common import (
    KIND_NAMES,
    app,
    catalog,
    catalog_view,
    choice,
    human_size,
    settings,
    warn,
)
from lifeos_backup.core.errors import InvalidName, NotFound
from lifeos_backup.core.names import PathPattern, kind_of_id

if TYPE_CHECKING:
    from lifeos_backup.formats.manifest import FileEntry, Manifest
    from lifeos_backup.jobs.browse import PostgresDiff

JsonOption = Annotated[bool, typer.Option("--json", help="JSON for scripts.")]


def pattern_of(text: str) -> PathPattern:
    """A path or glob inside a backup; a hostile or broken one is a usage error."""
    try:
        return PathPattern(text)
    except InvalidName as exc:
        raise typer.BadParameter(f"{exc.what}: {exc.detail}") from None


def check_pattern(value: str | None) -> str | None:
    if value is not None:
        pattern_of(value)
    return value


def check_patterns(values: list[str] | None) -> list[str] | None:
    for value in values or ():
        pattern_of(value)
    return values


def _write(line: str) -> None:
    sys.stdout.write(line + "\n")


def _time(epoch: int | None) -> str:
    if epoch is None:
        return "-" * 16
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M")


_TYPE_BITS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}


def _entry_line(e: FileEntry) -> str:
    link = f" -> {e.linkname}" if e.type == "symlink" else ""
    mode = stat.filemode(_TYPE_BITS[e.type] | e.mode)
    return f"{mode} {e.size:>12} {_time(e.mtime)}  {e.path}{link}"


def _entry_dict(e: FileEntry) -> dict[str, Any]:
    return e.model_dump(exclude_none=True)


def _stream_json(head: str, items: Iterable[dict[str, Any]], tail: str) -> int:
    """Print `head`, the items as a JSON array's elements, then `tail`; returns the count."""
    sys.stdout.write(head)
    count = 0
    for item in items:
        sys.stdout.write(("\n" if count == 0 else ",\n") + json.dumps(item))
        count += 1
    sys.stdout.write(("\n" if count else "") + tail + "\n")
    return count


@app.command("ls")
def ls(
    backup_id: str,
    path: Annotated[
        str | None,
        typer.Argument(
            help="Only this folder or glob (JSON: a path in the backup such as data/characters "
            "or 'data/*/*.json'; PostgreSQL: schema.table, e.g. 'public.*').",
            callback=check_pattern,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List what a backup holds, from its manifest (the archive is not read).

    JSON: its files and folders (mode, size, time, path); PostgreSQL: its tables with row
    counts and sizes; base backup: its WAL range.
    """
    from lifeos_backup.jobs import browse

    patterns = [pattern_of(path)] if path else []
    with catalog_view() as view:
        manifest = browse.local_manifest(settings(), view, backup_id)
    if manifest.kind == "json":
        entries = browse.matching(manifest.iter_files(), patterns)
        if as_json:
            count = _stream_json("[", (_entry_dict(e) for e in entries), "]")
        else:
            count = 0
            for entry in entries:
                _write(_entry_line(entry))
                count += 1
        if patterns and not count:
            raise NotFound(
                f"nothing in backup {backup_id} matches {path}",
                hint=f"see `lifeos-backup ls {backup_id}`",
            )
    elif manifest.kind == "postgres":
        _ls_postgres(manifest, patterns, as_json)
    else:
        if patterns:
            raise typer.BadParameter(
                f"a {KIND_NAMES[manifest.kind]} backup holds no paths to list", param_hint="PATH"
            )
        found = browse.wal_range(manifest)
        if as_json:
            print(json.dumps({"kind": manifest.kind, **found}))
        else:
            for key, value in found.items():
                _write(f"{key:<16} {value}")


def _ls_postgres(manifest: Manifest, patterns: list[PathPattern], as_json: bool) -> None:
    from lifeos_backup.jobs import browse

    rows = browse.tables(manifest, patterns)
    if patterns and not rows:
        raise NotFound(
            f"no table of backup {manifest.backup_id} matches {patterns[0].text}",
            hint=f"see `lifeos-backup ls {manifest.backup_id}`",
        )
    if as_json:
        facts = manifest.facts
        print(
            json.dumps(
                {
                    "kind": "postgres",
                    "database": facts.get("database"),
                    "tables": [r.as_dict() for r in rows],
                    "schemas": facts.get("schemas", []),
                    "sequences": facts.get("sequences", []),
                }
            )
        )
        return
    width = max([len("table"), *(len(r.qualified) for r in rows)])
    _write(f"{'table':<{width}} {'rows':>12} {'size':>10}")
    for r in rows:
        _write(f"{r.qualified:<{width}} {r.rows:>12} {human_size(r.bytes):>10}")


@app.command("find")
def find(
    glob: Annotated[
        str,
        typer.Argument(
            help="Path or glob in the backups, e.g. data/characters/ana.json or "
            "'data/**/ana*.json' (PostgreSQL: schema.table).",
            callback=check_pattern,
        ),
    ],
    kind: Annotated[
        str,
        typer.Option(
            help="Search json backups (files) or postgres backups (tables).",
            callback=choice("a kind with named contents", lambda: ("json", "postgres")),
        ),
    ] = "json",
    since: Annotated[
        str | None,
        typer.Option(help="Only backups since: 7d, 24h, 30m, 2w or an ISO date.",
                     callback=check_since),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Which backups hold a matching path, newest first.

    Each version's backup time, size and SHA-256, and what the next newer backup holds of it
    (`then`: same, changed or removed).
    """
    from lifeos_backup.jobs import browse
    from lifeos_backup.storage.audit import parse_since

    moment = parse_since(since) if since else None
    versions = browse.find(settings(), catalog(), pattern_of(glob), kind, moment, warn)
    if as_json:
        count = _stream_json("[", (v.as_dict() for v in versions), "]")
    else:
        count = 0
        for v in versions:
            if count == 0:
                _write(f"{'backup time (UTC)':<19}  {'backup':<26} {'size':>10}  "
                       f"{'sha256' if kind == 'json' else 'rows':<12}  {'then':<7}  path")
            digest = (v.sha256 or "")[:12] if kind == "json" else str(v.rows)
            _write(f"{v.created_at.strftime('%Y-%m-%d %H:%M:%S')}  {v.backup_id:<26} "
                   f"{human_size(v.size):>10}  {digest:<12}  {v.then:<7}  {v.path}")
            count += 1
    if not count:
        raise NotFound(
            f"no {kind} backup holds {glob}",
            hint="globs match the path in the backup (see `lifeos-backup ls ID`); widen --since",
        )


@app.command("diff")
def diff(backup_id: str, other_id: str, as_json: JsonOption = False) -> None:
    """What changed from BACKUP_ID to OTHER_ID, from their manifests (and archive heads).

    JSON: files added, removed and changed (by SHA-256), with sizes; PostgreSQL: tables added,
    removed or with other row counts, schemas and sequences added or removed, and the other
    schema objects (indexes, constraints, functions, types, views, triggers, extensions, ...)
    added or removed by name, from the head of each archive (encrypted ones need the private
    key); base backups: the facts that differ (their WAL ranges).
    """
    from lifeos_backup.jobs import browse

    kinds = kind_of_id(backup_id), kind_of_id(other_id)
    if kinds[0] != kinds[1]:
        raise typer.BadParameter(
            f"{backup_id} is a {KIND_NAMES[kinds[0]]} backup and {other_id} a "
            f"{KIND_NAMES[kinds[1]]} one: diff compares two backups of one kind",
            param_hint="OTHER_ID",
        )
    s, c = settings(), catalog()
    old, new = browse.local_manifest(s, c, backup_id), browse.local_manifest(s, c, other_id)
    head = {"old": backup_id, "new": other_id, "kind": kinds[0]}
    if kinds[0] == "json":
        changes = browse.diff_files(old, new)
        if as_json:
            _stream_json(json.dumps(head)[:-1] + ', "changes": [',
                         (ch.as_dict() for ch in changes), "]}")
            return
        counts = {"added": 0, "removed": 0, "changed": 0}
        signs = {"added": "+", "removed": "-", "changed": "M"}
        for ch in changes:
            counts[ch.change] += 1
            sizes = (human_size(ch.new_size) if ch.change == "added" else
                     human_size(ch.old_size) if ch.change == "removed" else
                     f"{human_size(ch.old_size)} -> {human_size(ch.new_size)}")
            slash = "/" if ch.type == "dir" else ""
            _write(f"{signs[ch.change]} {ch.path}{slash}  ({sizes})")
        _write(", ".join(f"{n} {what}" for what, n in counts.items()))
    elif kinds[0] == "postgres":
        found = browse.diff_postgres_backups(s, c, old, new)
        if found.note:
            warn(found.note)
        if as_json:
            print(json.dumps({**head, **found.as_dict()}))
            return
        _print_postgres_diff(found)
    else:
        facts = browse.diff_facts(old, new)
        if as_json:
            print(json.dumps({**head, "facts": facts}))
            return
        for key, pair in facts.items():
            _write(f"{key:<20} {pair['old']} -> {pair['new']}")


def _print_postgres_diff(found: PostgresDiff) -> None:
    signs = {"added": "+", "removed": "-", "changed": "M"}
    for t in found.tables:
        if t.change == "changed":
            _write(f"M table {t.table}  rows {t.old_rows} -> {t.new_rows}")
        elif t.change == "added":
            _write(f"+ table {t.table}  rows {t.new_rows}")
        else:
            _write(f"- table {t.table}  rows {t.old_rows}")
    for what, added, removed in (
        ("schema", found.schemas_added, found.schemas_removed),
        ("sequence", found.sequences_added, found.sequences_removed),
    ):
        for name in added:
            _write(f"{signs['added']} {what} {name}")
        for name in removed:
            _write(f"{signs['removed']} {what} {name}")
    for obj in found.objects_added:
        _write(f"{signs['added']} {obj}")
    for obj in found.objects_removed:
        _write(f"{signs['removed']} {obj}")
    if found.empty:
        what = "schema objects" if found.objects_compared else "schemas or sequences"
        _write(f"no differences in tables, row counts, {what}")
