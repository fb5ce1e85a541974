"""Restoring a PostgreSQL backup into a named database, then proving it against the manifest.

Order: the archive's checksum first (a bad archive never touches a database), then the target
(created with --create; refused when it already holds tables, unless force; a table restore is
refused only when the target has one of the relations it would create), then the restore in
pg_restore's three sections, then the exact row count of every restored table compared with the
counts taken in the dump's snapshot. A table restore brings what its tables need and the target
lacks (tableplan.py, present.py).

The sections run as the archive's parts allow (parts.py): the definitions (pre-data) from part 0;
the data of all parts `jobs` at a time, each part streamed decompressed (no copy of the dump on
disk) into its own pg_restore, or for a COPY slice of a big table into its own `COPY FROM STDIN`,
so that several slices load one table at once, the biggest table first; a big table's own keys
and then each of its indexes, the slowest first (buildplan.py), are built as soon as its last
slice is in, before the parts still waiting (by one server process when other jobs run beside:
docs/decisions.md); then the rest of the keys, indexes
and constraints (post-data) with `--jobs`, from the head of part 0 (tochead.py: header and table
of contents, a small file pg_restore can seek in). The rows of the sliced tables are what their
COPYs loaded (the server's count); the other tables are counted beside the post-data section.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from lifeos_backup.core import procs
from lifeos_backup.core.errors import ConfigError, NotFound, PermanentError, TargetNotEmpty
from lifeos_backup.core.fsutil import FILE_MODE, private_dir
from lifeos_backup.core.procs import pid_alive
from lifeos_backup.core.progress import Progress, ProgressFn, ignore
from lifeos_backup.core.settings import Settings
from lifeos_backup.core.sidebyside import Crew, run_side_by_side
from lifeos_backup.formats.manifest import Manifest
from lifeos_backup.formats.streams import CHUNK
from lifeos_backup.kinds.postgres.buildplan import plan_builds
from lifeos_backup.kinds.postgres.check import manifest_tables, verify_checksum
from lifeos_backup.kinds.postgres.connect import connect
from lifeos_backup.kinds.postgres.conninfo import PgTarget, restore_target
from lifeos_backup.kinds.postgres.parts import Part, PartSource, open_part, part_sources, parts_of
from lifeos_backup.kinds.postgres.present import Presence, kept_differences, name_taken
from lifeos_backup.kinds.postgres.rows import SESSION, Slice
from lifeos_backup.kinds.postgres.snapshot import count_rows
from lifeos_backup.kinds.postgres.tableplan import TablePlan, plan_tables
from lifeos_backup.kinds.postgres.toc import SESSION as TOC_SESSION
from lifeos_backup.kinds.postgres.toc import TocEntry, list_toc, own_post_data, use_list
from lifeos_backup.kinds.postgres.tochead import copy_head
from lifeos_backup.kinds.postgres.tools import Tool, require_restore_not_older, tool
from lifeos_backup.kinds.postgres.vacuumguard import VacuumGuards

log = logging.getLogger(__name__)

# An index build beside other jobs: the leader alone (docs/decisions.md, "PostgreSQL dump format").
ONE_PROCESS = "-c max_parallel_maintenance_workers=0"
# psycopg sends a COPY write of more than 128 KiB as 128 KiB copies of it: reading no more than
# that from the decompressor saves that copy (about 0.1 CPU s per GB, docs/decisions.md).
COPY_CHUNK = 128 * 1024
WORKSPACE = ".restore"  # under the backup root: hidden, never inside a kind's folder
MAINTENANCE_DB = "postgres"  # where CREATE DATABASE is run
# A whole restore of an archive of one pg_dump part whose dump is smaller than this is one
# pg_restore reading the stream: no head file, no table of contents read first, no separate
# processes per section. Above it, the sections run apart so that the post-data (index builds)
# can use `--jobs` (docs/decisions.md, "Small databases").
ONE_STREAM_BELOW = 64 << 20
_USER_RELATIONS = (
    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')"
    " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
    r" AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%'"
    " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass"
    " AND d.objid = c.oid AND d.deptype = 'e')"
)


class RowCountMismatch(PermanentError):
    """Restored tables do not hold the rows the manifest counted in the dump's snapshot."""


class TargetExists(PermanentError):
    """--create was asked for a database that already exists."""


@dataclass
class TableCount:
    """One restored table: rows in the manifest, rows found after the restore (None: missing)."""

    table: str
    expected: int
    restored: int | None

    @property
    def matches(self) -> bool:
        return self.restored == self.expected


@dataclass
class RestoreReport:
    """What a restore did and how the result compares with the manifest. A table restore also
    names the objects its tables need that the target already had (`kept`, as they were) and
    says what it left out or found different (`warnings`, one line each)."""

    backup_id: str
    database: str
    jobs: int
    counts: list[TableCount] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def differences(self) -> list[TableCount]:
        return [count for count in self.counts if not count.matches]


def restore_postgres(
    archive: Path,
    manifest: Manifest,
    settings: Settings,
    database: str,
    *,
    create: bool = False,
    jobs: int | None = None,
    tables: Sequence[str] = (),
    force: bool = False,
    progress: ProgressFn = ignore,
    planned: Callable[[RestoreReport], None] = lambda _report: None,
    server: str | None = None,
) -> RestoreReport:
    """Restore `archive` into `database` (a name on `server` or the source server, or a URL;
    conninfo.restore_target) and compare.

    `tables` restores only those tables (schema.name or name) with their keys, indexes, defaults,
    owned sequences and triggers, and what they need that the target lacks (types, domains,
    functions, sequences, extensions, schemas). Returns the row counts; the caller decides what a
    difference means. `planned` is called with the report once a table restore knows what it
    keeps and leaves out, before anything is restored, so that a caller can say so even if the
    restore then fails.
    """
    if manifest.kind != "postgres":
        raise ConfigError(f"backup {manifest.backup_id} is a {manifest.kind} backup, not postgres")
    wanted = resolve_tables(manifest, tables)
    jobs = settings.restore_jobs if jobs is None else jobs
    if jobs < 1:
        raise ConfigError("--jobs must be 1 or more", f"got {jobs}")
    pg_restore = tool(settings, "pg_restore")
    require_restore_not_older(
        pg_restore,
        str(manifest.facts.get("pg_dump_version", "?")),
        int(manifest.facts.get("pg_dump_major", 0)),
    )
    target = restore_target(settings, database, server)
    verify_checksum(archive, manifest, progress)
    prepare_target(target, manifest, create=create, force=force, selective=bool(tables))
    report = RestoreReport(manifest.backup_id, target.describe(), jobs)
    try:
        run_restore(
            archive,
            manifest,
            settings,
            pg_restore,
            target,
            wanted,
            report,
            selective=bool(tables),
            force=force,
            progress=progress,
            planned=planned,
        )
    except BaseException:
        if create:  # a half-restored database of our own making would block the next --create
            drop_database(target)
        raise
    return report


def run_restore(
    archive: Path,
    manifest: Manifest,
    settings: Settings,
    pg_restore: Tool,
    target: PgTarget,
    wanted: list[tuple[str, str]],
    report: RestoreReport,
    *,
    selective: bool,
    force: bool,
    progress: ProgressFn,
    planned: Callable[[RestoreReport], None],
) -> None:
    """pre-data, data (parts side by side), post-data (`--jobs`) beside the row counts, which go
    into `report`."""
    jobs = report.jobs
    parts = parts_of(manifest)
    algorithm = manifest.compression.algorithm
    base = restore_args(pg_restore, target)
    with workspace(settings, manifest.backup_id) as work:
        sources = part_sources(archive, manifest, parts, work)  # decrypted here if encrypted
        if one_stream(parts, selective=selective, force=force):
            bar = Progress("restoring", bytes_total=max(parts[0].dump_bytes, 0))
            fed = [0]

            def tick() -> None:
                bar.bytes_done = fed[0]
                progress(bar)

            run_side_by_side(
                [functools.partial(stream_into, base, sources[0], algorithm, target, fed=fed,
                                   slot=0)],
                1,
                tick,
            )
            report.counts = compare_counts(target, manifest, wanted)
            return
        head = work / "head.dump"
        write_head(sources[0], algorithm, head)
        toc = list_toc(pg_restore, head)
        lists: list[list[str] | None] = [[] for _ in parts]
        chosen = toc
        if selective:
            plan = plan_selection(pg_restore, head, toc, wanted, target, work, force, report)
            planned(report)
            chosen = plan.entries
            lists = use_lists(parts, sources, algorithm, chosen, pg_restore, work, wanted)
        schema_list = lists[0] or []
        if force:
            drop_objects(pg_restore, target, head, schema_list)
        progress(Progress("restoring definitions"))
        procs.run(
            [*base, "--section=pre-data", *schema_list, str(head)],
            env=target.env(), stdout=subprocess.DEVNULL,
        )
        early, rest = plan_post_data(pg_restore, parts, chosen, wanted, head, work)
        bar = Progress("restoring data", bytes_total=sum(max(p.dump_bytes, 0) for p in parts))
        encoding = str(manifest.facts.get("encoding") or "UTF8")
        loaded = load_data(
            parts, sources, lists, wanted, pg_restore, target, jobs, algorithm, encoding, early,
            bar, progress,
        )
        progress(Progress("restoring keys, indexes and constraints; counting rows"))
        with ThreadPoolExecutor(1, thread_name_prefix="row-count") as pool:
            # If post-data fails, leaving the block waits for the counting and drops its result:
            # pg_restore's error is the one to report.
            counting = pool.submit(compare_counts, target, manifest, wanted, loaded)
            parallel = [f"--jobs={jobs}"] if jobs > 1 else []
            procs.run(
                [*base, "--section=post-data", *parallel, *(rest or schema_list), str(head)],
                env=target.env(), stdout=subprocess.DEVNULL,
            )
            report.counts = counting.result()


def one_stream(parts: Sequence[Part], *, selective: bool, force: bool) -> bool:
    """Whether a restore is one pg_restore of the whole stream: a whole restore (no --table, no
    --force, which drop and pick entries by the table of contents) of one small pg_dump part."""
    if selective or force or len(parts) != 1 or parts[0].copy is not None:
        return False
    return 0 <= parts[0].dump_bytes < ONE_STREAM_BELOW


def plan_selection(
    pg_restore: Tool,
    head: Path,
    toc: list[TocEntry],
    wanted: list[tuple[str, str]],
    target: PgTarget,
    work: Path,
    force: bool,
    report: RestoreReport,
) -> TablePlan:
    """The entries of a table restore, as the target stands (tableplan.py): what it already has
    is kept and named in `report`, with the kept enums and sequences that differ from the backup
    and what is left out. A target that already has one of the tables (or their sequences or
    indexes) is refused unless `force`. The schemas of the entries that have no entry of their
    own in the dump (`public`) are created if missing."""
    with connect(target, autocommit=True) as conn:
        plan = plan_tables(toc, wanted, Presence(conn))
        taken = name_taken(conn, plan.entries)
        if taken and not force:
            raise TargetNotEmpty(
                f"database {target.params.get('dbname')} already has {', '.join(taken[:10])}",
                hint="restore into a new database with --create, or pass --force to drop "
                "them and restore them anew (what they need is kept as the target has it)",
            )
        report.kept = [e.label for e in plan.kept]
        report.warnings = plan.left_out + kept_differences(
            pg_restore, head, toc, plan.kept, work, conn
        )
    brought = {e.tag for e in plan.entries if e.desc == "SCHEMA"}
    create_schemas(target, {e.schema for e in plan.entries if e.schema != "-"} - brought)
    return plan


def plan_post_data(
    pg_restore: Tool,
    parts: list[Part],
    chosen: list[TocEntry],
    wanted: list[tuple[str, str]],
    head: Path,
    work: Path,
) -> tuple[dict[tuple[str, str], list[list[str]]], list[str]]:
    """The pg_restore arguments (after the connection's) of each sliced table's own keys and
    indexes, in build order (buildplan.py: the keys, then each index alone, the slowest first),
    run as soon as its rows are in; and the use-list of the rest of the post-data (none:
    nothing built early)."""
    sliced = {(p.copy.schema, p.copy.name) for p in parts if p.copy is not None}
    early: dict[tuple[str, str], list[list[str]]] = {}
    built: set[int] = set()
    for number, table in enumerate(t for t in wanted if t in sliced):
        own = own_post_data(chosen, *table)
        if not own:
            continue
        builds = plan_builds(pg_restore, head, own, work / f"indexes-{number}.txt")
        steps = [builds.keys] if builds.keys else []
        early[table] = [
            ["--section=post-data", write_use_list(work / f"post-data-{number}-{n}.txt", chosen,
                                                   step), str(head)]
            for n, step in enumerate([*steps, *builds.indexes])
        ]
        built.update(e.dump_id for e in own)
    if not built:
        return early, []
    others = [e for e in chosen if e.dump_id not in built]
    return early, [write_use_list(work / "post-data-rest.txt", chosen, others)]


def write_use_list(path: Path, toc: list[TocEntry], entries: list[TocEntry]) -> str:
    """A `--use-list` file of `entries` (and the session set-up every restore needs)."""
    ids = {e.dump_id for e in entries}
    path.write_text(use_list(e for e in toc if e.dump_id in ids or e.desc in TOC_SESSION))
    return f"--use-list={path}"


def write_head(source: PartSource, algorithm: str, head: Path) -> None:
    """Part 0's header and table of contents, as a file for the definitions and the post-data."""
    fd = os.open(head, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with open_part(source, algorithm) as stream, os.fdopen(fd, "wb") as out:
        copy_head(stream, out)


def use_lists(
    parts: list[Part],
    sources: list[PartSource],
    algorithm: str,
    head_chosen: list[TocEntry],
    pg_restore: Tool,
    work: Path,
    wanted: list[tuple[str, str]],
) -> list[list[str] | None]:
    """`--use-list` arguments per part for a selective restore: part 0 `head_chosen` (the tables
    with what depends only on them), other pg_dump parts the data of those tables (None: none of
    it there, or a COPY slice, chosen by its table). Only the parts' heads are read."""
    lists: list[list[str] | None] = []
    for number, (part, source) in enumerate(zip(parts, sources, strict=True)):
        chosen = head_chosen
        if number and part.copy is None:
            part_head = work / f"head-{number}.dump"
            write_head(source, algorithm, part_head)
            toc = list_toc(pg_restore, part_head)
            data = [e for e in toc if any(e.names("TABLE DATA", s, n) for s, n in wanted)]
            chosen = [e for e in toc if e.desc in TOC_SESSION] + data if data else []
        if number and not (part.copy is None and chosen):
            lists.append(None)
            continue
        path = work / f"use-list-{number}.txt"
        path.write_text(use_list(chosen))
        lists.append([f"--use-list={path}"])
    return lists


def load_data(
    parts: list[Part],
    sources: list[PartSource],
    lists: list[list[str] | None],
    wanted: list[tuple[str, str]],
    pg_restore: Tool,
    target: PgTarget,
    jobs: int,
    algorithm: str,
    encoding: str,
    follow_ups: dict[tuple[str, str], list[list[str]]],
    report: Progress,
    progress: ProgressFn,
) -> dict[tuple[str, str], int]:
    """The data of every part, `jobs` parts at a time: pg_dump parts streamed into pg_restore,
    slices into COPY, the biggest table's first (`load_order`); once a sliced table's last slice
    is in, its `follow_ups` (pg_restores of its own keys, then of each index, the slowest first)
    run before the parts still waiting, so that the biggest table's index builds overlap the
    other tables' loads and each other. From its first slice to its first build a table is kept
    from autovacuum (vacuumguard.py). Returns
    the rows the slices loaded, per table."""
    base = restore_args(pg_restore, target)
    fed = [0] * len(sources)
    loaded: dict[tuple[str, str], list[int]] = {}
    left: collections.Counter[tuple[str, str]] = collections.Counter()
    counting = threading.Lock()
    guards = VacuumGuards(target)

    def tick() -> None:
        report.bytes_done = sum(fed)
        progress(report)

    def load(number: int, use: list[str], crew: Crew) -> None:
        args = [*base, "--section=data", *use]
        stream_into(args, sources[number], algorithm, target, crew, fed, number)

    def copy(number: int, piece: Slice, crew: Crew) -> None:
        table = (piece.schema, piece.name)
        guards.hold(table)
        rows = copy_into(piece, sources[number], algorithm, target, encoding, crew, fed, number)
        with counting:
            loaded[table].append(rows)
            left[table] -= 1
            last = left[table] == 0
        if last and table in follow_ups:
            crew.next(functools.partial(build_own, table))
        elif last:
            guards.release(table)

    def build_own(table: tuple[str, str], crew: Crew) -> None:
        guards.release(table)  # the index build's lock conflicts with the guard's
        first, *rest = follow_ups[table]
        build(first, crew)
        # The rest start before every job still waiting, the slowest first, on any free worker
        # (CREATE INDEX builds on one table run side by side; the keys, done now, would not).
        for args in reversed(rest):
            crew.next(functools.partial(build, args))

    def build(args: list[str], crew: Crew) -> None:
        # Beside other jobs a parallel build would crowd them out of the server's cores.
        own = restore_args(pg_restore, target, one_process=crew.shared())
        run_tracked([*own, *args], target, crew)

    loads = []
    for number in load_order(parts):
        part, use = parts[number], lists[number]
        if part.copy is None and use is not None:
            loads.append(functools.partial(load, number, use))
        elif part.copy is not None and (part.copy.schema, part.copy.name) in wanted:
            table = (part.copy.schema, part.copy.name)
            loaded.setdefault(table, [])
            left[table] += 1
            loads.append(functools.partial(copy, number, part.copy))
    try:
        run_side_by_side(loads, jobs, tick)
    finally:
        guards.release_all()
    return {table: sum(rows) for table, rows in loaded.items()}


def load_order(parts: Sequence[Part]) -> list[int]:
    """Part numbers in loading order: pg_dump parts as archived, then the slices, biggest table
    first (its load and then its index build are the restore's longest chain), each table's in
    archive (page) order."""
    size: collections.Counter[tuple[str, str]] = collections.Counter()
    for part in parts:
        if part.copy is not None:
            size[(part.copy.schema, part.copy.name)] += max(part.dump_bytes, part.size)

    def key(number: int) -> tuple[int, int, str, str]:
        piece = parts[number].copy
        if piece is None:
            return (0, 0, "", "")
        return (1, -size[(piece.schema, piece.name)], piece.schema, piece.name)

    return sorted(range(len(parts)), key=key)


def copy_into(
    piece: Slice,
    source: PartSource,
    algorithm: str,
    target: PgTarget,
    encoding: str,
    crew: Crew,
    fed: list[int],
    slot: int,
) -> int:
    """Stream one decompressed slice into `COPY ... FROM STDIN`; the rows the server loaded."""
    try:
        with connect(target, autocommit=True) as conn, open_part(source, algorithm) as stream:
            conn.execute(SESSION)
            conn.execute(sql.SQL("SET client_encoding = {}").format(sql.Literal(encoding)))
            cursor = conn.cursor()
            with cursor.copy(piece.copy_in()) as copy:
                while chunk := stream.read(COPY_CHUNK):
                    if crew.stopped:  # another part failed: abandon this COPY (rolled back)
                        raise InterruptedError("stopped")
                    copy.write(chunk)
                    fed[slot] += len(chunk)
            return cursor.rowcount
    except psycopg.Error as exc:
        raise PermanentError(
            f"loading the rows of {piece.qualified} failed",
            target.redact(str(exc).strip()),
            "the target database is left as it is; restore into a new one with --create",
        ) from exc


def run_tracked(args: list[str], target: PgTarget, crew: Crew) -> None:
    """One pg_restore among the side-by-side jobs: stopped when another fails."""
    with procs.spawn(args, env=target.env(), stdout=subprocess.DEVNULL) as proc:
        crew.track(proc)


def stream_into(
    args: list[str],
    source: PartSource,
    algorithm: str,
    target: PgTarget,
    crew: Crew,
    fed: list[int],
    slot: int,
) -> None:
    """Pipe one decompressed part into a pg_restore; its own error wins over our EPIPE."""
    with open_part(source, algorithm) as stream, procs.spawn(
        args, env=target.env(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
    ) as proc:
        crew.track(proc)
        assert proc.stdin is not None
        while chunk := stream.read(CHUNK):
            try:
                proc.stdin.write(chunk)
            except BrokenPipeError:  # pg_restore has read what it needs; spawn checks its exit
                break
            fed[slot] += len(chunk)


def drop_objects(pg_restore: Tool, target: PgTarget, head: Path, use: list[str]) -> None:
    """--force: drop the backup's objects that exist, as `pg_restore --clean --if-exists` would.

    pg_restore only drops together with creating everything, and the sections here run apart, so
    its script is asked for and its DROP part (everything before the first object's "-- Name:"
    comment, minus psql meta-commands) run here.
    """
    script = procs.run(
        [pg_restore.path, "--clean", "--if-exists", "--schema-only", *use, "--file=-", str(head)],
        capture_stdout=True,
    ).stdout or b""
    text = script.decode().split("\n--\n-- Name: ", 1)[0]
    statements = "\n".join(line for line in text.splitlines() if not line.startswith("\\"))
    with connect(target, autocommit=True) as conn:
        conn.execute(statements.encode())


def resolve_tables(manifest: Manifest, names: Sequence[str]) -> list[tuple[str, str]]:
    """(schema, name) of the tables asked for; all of the backup's tables when none are."""
    known = manifest_tables(manifest)
    if not names:
        return known
    chosen: list[tuple[str, str]] = []
    for name in names:
        matches = [k for k in known if f"{k[0]}.{k[1]}" == name] or [
            k for k in known if k[1] == name
        ]
        if not matches:
            listed = ", ".join(f"{s}.{n}" for s, n in known[:20])
            raise NotFound(
                f"table {name!r} is not in backup {manifest.backup_id}", hint=f"it has: {listed}"
            )
        if len(matches) > 1:
            raise ConfigError(
                f"table name {name!r} is ambiguous",
                ", ".join(f"{s}.{n}" for s, n in matches),
                "write it as schema.table",
            )
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return chosen


def prepare_target(
    target: PgTarget, manifest: Manifest, *, create: bool, force: bool, selective: bool = False
) -> None:
    """Create the database (create=True), or check the existing one holds no tables. A table
    restore (`selective`) may go into a database with other tables: what it would collide with
    is only known from the dump's table of contents (plan_selection)."""
    name = target.params.get("dbname")
    if not name:
        raise ConfigError("no target database named", hint="pass --database NAME")
    if create:
        create_database(target, name, manifest)
        return
    try:
        conn = connect(target, autocommit=True)
    except NotFound as exc:
        raise NotFound(exc.what, exc.detail, "pass --create to create it") from None
    with conn:
        row = None if selective else conn.execute(_USER_RELATIONS).fetchone()
    held = int(row[0]) if row else 0
    if held and not force:
        raise TargetNotEmpty(
            f"database {name} already holds {held} tables, views or sequences",
            hint="restore into a new database with --create, or pass --force to replace "
            "the objects of the backup",
        )


def create_database(target: PgTarget, name: str, manifest: Manifest) -> None:
    """CREATE DATABASE from template0 with the source's encoding and locale."""
    facts = manifest.facts
    statement = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
    for option, key in (("ENCODING", "encoding"), ("LC_COLLATE", "collate"), ("LC_CTYPE", "ctype")):
        if facts.get(key):
            statement += sql.SQL(" {} {}").format(sql.SQL(option), sql.Literal(facts[key]))
    admin = target.with_params(dbname=MAINTENANCE_DB)
    with connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            raise TargetExists(
                f"database {name} already exists",
                hint="choose a new name, or leave out --create to restore into it",
            )
        try:
            conn.execute(statement)
        except psycopg.Error as exc:
            raise PermanentError(
                f"cannot create database {name}",
                target.redact(str(exc).strip()),
                "create it yourself (empty) and restore without --create",
            ) from None


def drop_database(target: PgTarget) -> None:
    """Best effort: remove a database this restore created, after the restore failed."""
    name = target.params.get("dbname", "")
    try:
        with connect(target.with_params(dbname=MAINTENANCE_DB), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    except Exception as exc:  # the restore's own error is the one to report
        log.warning("could not drop the half-restored database %s: %s", name, exc)


def create_schemas(target: PgTarget, schemas: set[str]) -> None:
    """A schema without an entry of its own in the dump (`public`, which every database has
    unless someone dropped it) is created by hand when a table restore needs it."""
    with connect(target, autocommit=True) as conn:
        for schema in sorted(schemas):
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))


def restore_args(pg_restore: Tool, target: PgTarget, *, one_process: bool = False) -> list[str]:
    """pg_restore's arguments; it stops at the first error so the report names the cause.
    `one_process`: its index builds take no parallel workers (the server option added to the
    connection's own)."""
    if one_process:
        options = f"{target.params.get('options', '')} {ONE_PROCESS}".strip()
        target = target.with_params(options=options)
    return [pg_restore.path, "--no-password", "--exit-on-error", f"--dbname={target.conninfo()}"]


@contextlib.contextmanager
def workspace(settings: Settings, backup_id: str) -> Iterator[Path]:
    """A private folder for this restore's temporary files, removed afterwards."""
    root = private_dir(settings.backup_root / WORKSPACE)
    remove_abandoned(root)
    work = root / f"{backup_id}@{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    private_dir(work)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def remove_abandoned(root: Path) -> None:
    """Workspaces of restores whose process is gone (killed) would keep gigabytes forever.

    Only this host's: on a shared backup root another host's pids mean nothing here.
    """
    for path in root.iterdir():
        host, _, pid = path.name.rpartition("@")[2].rpartition("-")
        if host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def compare_counts(
    target: PgTarget,
    manifest: Manifest,
    wanted: list[tuple[str, str]],
    loaded: dict[tuple[str, str], int] | None = None,
) -> list[TableCount]:
    """Exact row count of every restored table next to the manifest's count; for the tables
    loaded by COPY slices, the rows those COPYs loaded (the server's count, no second scan)."""
    expected = {(t["schema"], t["name"]): int(t["rows"]) for t in manifest.facts.get("tables", [])}
    loaded = loaded or {}
    counts: list[TableCount] = []
    with connect(target, autocommit=True) as conn:
        for schema, name in wanted:
            if (schema, name) in loaded:
                counts.append(
                    TableCount(f"{schema}.{name}", expected[(schema, name)], loaded[schema, name])
                )
                continue
            try:
                restored: int | None = count_rows(conn, schema, name)
            except psycopg.errors.UndefinedTable:
                restored = None
            counts.append(TableCount(f"{schema}.{name}", expected[(schema, name)], restored))
    return counts
