"""Writing a PostgreSQL archive in parts, through zstd and SHA-256.

Part 0 is `pg_dump -Fc -Z0` without the data of the big tables; each big table comes as COPY
slices, each dumped by psql (parts.py, rows.py); all from the same exported snapshot, `dump_jobs`
at a time. Each part's command writes to a pipe; a thread per part compresses it with zstd into
an unnamed temporary file (compressed: the archive's size, never the dump's), in 1 MiB chunks;
psql reports a slice's rows when it is done. The parts are then joined, hashed [and encrypted]
under a temporary name (fsutil.atomic_writer). No uncompressed copy on disk, bounded memory
whatever the database size. docs/decisions.md has the measurements.

Order matters for the failure modes: connect (unreachable: retryable; bad login: permanent), then
compare pg_dump's version with the server's, and only then create the file. Whatever fails later
(pg_dump killed, disk full, lock lost) removes the temporary file before the error propagates.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import tempfile
from collections.abc import Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import psycopg
from psycopg import sql

from lifeos_backup.core import procs
from lifeos_backup.core.errors import CommandFailed, ConfigError, PermanentError, SourceUnavailable
from lifeos_backup.core.fsutil import atomic_writer, private_dir
from lifeos_backup.core.progress import Progress, ProgressFn
from lifeos_backup.core.settings import Settings
from lifeos_backup.core.sidebyside import Crew, run_side_by_side
from lifeos_backup.formats.crypto import Recipient, parse_recipients, sealed
from lifeos_backup.formats.streams import CHUNK, HashingWriter, compressor
from lifeos_backup.kinds.postgres.connect import connect, one_line
from lifeos_backup.kinds.postgres.conninfo import PgTarget, postgres_configured
from lifeos_backup.kinds.postgres.parts import Part
from lifeos_backup.kinds.postgres.rows import (
    Slice,
    candidates,
    lock_tables,
    plan_slices,
    reported_rows,
)
from lifeos_backup.kinds.postgres.rows import dump_args as slice_args
from lifeos_backup.kinds.postgres.snapshot import (
    DatabaseFacts,
    catalog_facts,
    count_all,
    exported_snapshot,
)
from lifeos_backup.kinds.postgres.tools import Tool, find_tool, require_dump_not_older, tool

log = logging.getLogger(__name__)

ALGORITHM = "zstd"
FORMAT = "pg_dump custom format (-Fc -Z0) compressed with zstd"
# pg_dump waits this long for its ACCESS SHARE locks (e.g. behind a migration), then fails; the
# failure is retryable, so a busy moment delays the backup instead of hanging it for hours.
LOCK_WAIT = "120s"
PIPE_SIZE = 1 << 20
# pg_dump stderr fragments that mean the server went away or was busy: worth a retry.
_PASSING = (
    "could not connect",
    "connection to server",
    "server closed the connection",
    "terminating connection",
    "could not obtain lock",
    "the database system is",
    "no connection to the server",
    "could not send data",
    "could not receive data",
    "connection reset",
    "broken pipe",
    "ssl syscall error",
)


class DiskFull(PermanentError):
    """The backup disk ran out of space while the archive was written."""


@dataclass
class DumpResult:
    """What the dump wrote and what it saw; the kind turns it into the manifest."""

    size: int
    sha256: str
    level: int
    dump_bytes: int
    source: str
    facts: DatabaseFacts
    pg_dump: Tool
    parts: list[Part]

    def manifest_facts(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "pg_dump_version": self.pg_dump.version,
            "pg_dump_major": self.pg_dump.major,
            "dump_bytes": self.dump_bytes,
            **self.facts.as_facts(),
            "parts": [part.as_fact() for part in self.parts],
        }


def dump_args(pg_dump: Tool, target: PgTarget, snapshot: str) -> list[str]:
    """pg_dump's argument list: the conninfo carries no password (it goes in PGPASSWORD)."""
    return [
        pg_dump.path,
        "--format=custom",
        "--compress=0",
        f"--snapshot={snapshot}",
        f"--lock-wait-timeout={LOCK_WAIT}",
        "--no-password",
        f"--dbname={target.conninfo()}",
    ]


def pinned(target: PgTarget, conn: psycopg.Connection[tuple]) -> PgTarget:
    """The target pinned to the server and database actually reached: pg_dump must import the
    snapshot on the very same server, even when PGHOST lists several hosts."""
    info = conn.info
    return target.with_params(
        host=info.host, port=str(info.port), dbname=info.dbname, user=info.user
    )


def dump_database(settings: Settings, archive: Path, progress: ProgressFn) -> DumpResult:
    """Dump the configured database into `archive` (atomically) and collect its facts.

    A connection lost mid-dump (the server restarted or shut down: AdminShutdown, a dropped
    network) is a passing failure like an unreachable server: the task retries with backoff.
    """
    try:
        return _dump_database(settings, archive, progress)
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise SourceUnavailable(
            "lost the connection to PostgreSQL during the dump",
            one_line(PgTarget.from_settings(settings).redact(str(exc)))[-2000:],
            "the backup is retried with backoff",
        ) from exc


def _dump_database(settings: Settings, archive: Path, progress: ProgressFn) -> DumpResult:
    if not postgres_configured(settings):
        raise ConfigError(
            "no PostgreSQL database is configured",
            "LIFEOS_DATABASE_URL is unset and so are PGHOST, PGDATABASE and PGSERVICE",
            "set LIFEOS_DATABASE_URL=postgresql://user@host:5432/dbname (password in the URL "
            "or in ~/.pgpass)",
        )
    target = PgTarget.from_settings(settings)
    pg_dump = tool(settings, "pg_dump")
    level = settings.postgres_compression_level
    with contextlib.closing(connect(target)) as conn:
        server_version = conn.info.parameter_status("server_version") or "?"
        require_dump_not_older(pg_dump, server_version, conn.info.server_version)
        with exported_snapshot(conn) as snapshot:
            source = pinned(target, conn)
            facts, slices = _survey(conn, settings.dump_jobs, source)
            psql = find_tool(settings, "psql") if slices else ""
            sliced = {s.qualified for s in slices}
            tables = {(s.schema, s.name) for s in slices}
            commands = [
                part_args(dump_args(pg_dump, source, snapshot), tables),
                *(slice_args(psql, source.conninfo(), snapshot, facts.encoding, piece)
                  for piece in slices),
            ]
            counted = [t for t in facts.tables if t.qualified not in sliced]
            with ThreadPoolExecutor(1, thread_name_prefix="row-count") as pool:
                # Counting runs beside the dump, in the same snapshot, on the exporting
                # connection; the slices count their own rows.
                counting = pool.submit(count_all, conn, counted)
                try:
                    size, sha256, parts = _write(
                        commands, [None, *slices], settings.dump_jobs, source, archive, level,
                        progress, facts.database_size,
                        parse_recipients(settings.encryption_recipients),
                    )
                except BaseException:
                    _stop(conn, counting)
                    raise
                counting.result()
    parts[0].tables = [t.qualified for t in counted]
    for table in facts.tables:
        if table.qualified in sliced:
            table.rows = sum(s.rows for s in slices if s.qualified == table.qualified)
    dump_bytes = sum(p.dump_bytes for p in parts)
    log.info(
        "dumped %s in %d parts (%d slices): %d bytes of dump, %d bytes archived",
        source.describe(), len(parts), len(slices), dump_bytes, size,
    )
    return DumpResult(size, sha256, level, dump_bytes, source.describe(), facts, pg_dump, parts)


def _survey(
    conn: psycopg.Connection[tuple], jobs: int, source: PgTarget
) -> tuple[DatabaseFacts, list[Slice]]:
    """The facts and the slices, in the snapshot, the sliced tables locked for the whole dump.

    Reading table sizes and locking waits for any lock a migration holds; past LOCK_WAIT that is
    a retryable failure (the next attempt may find the migration done), never a hang.
    """
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_WAIT)))
    try:
        facts = catalog_facts(conn)
        sizes = {t.qualified: t.bytes for t in facts.tables}
        slices = plan_slices(candidates(conn, sizes), jobs, facts.server_version_num)
        lock_tables(conn, slices)
    except psycopg.errors.LockNotAvailable as exc:
        raise SourceUnavailable(
            f"could not lock the tables of {source.describe()} within {LOCK_WAIT}",
            one_line(str(exc)),
            "the backup is retried with backoff",
        ) from exc
    return facts, slices


def _pattern(schema: str, name: str) -> str:
    """An exact pg_dump name pattern: inside double quotes `.`, `*` and `?` are literal."""
    return ".".join('"' + word.replace('"', '""') + '"' for word in (schema, name))


def part_args(base: list[str], sliced: Collection[tuple[str, str]]) -> list[str]:
    """pg_dump's arguments for part 0: everything but the data the slices carry."""
    return base + [f"--exclude-table-data={_pattern(*table)}" for table in sorted(sliced)]


def _stop(conn: psycopg.Connection[tuple], counting: Future[None]) -> None:
    """Cancel the row counting of a failed dump; its own error is moot, the dump's is raised."""
    with contextlib.suppress(Exception):
        conn.cancel_safe(timeout=5)
    wait([counting], timeout=30)


@dataclass
class _PartRun:
    """One part's command as it runs: its arguments, its spool file, the plain bytes seen, and
    for a slice the slice, whose rows psql reports at its end."""

    args: list[str]
    out: BinaryIO
    piece: Slice | None
    done: int = 0


def _dump_part(run: _PartRun, source: PgTarget, level: int, crew: Crew) -> None:
    """One command's stdout -> zstd (in this thread: one part per core) -> its spool file."""
    with procs.spawn(run.args, env=source.env()) as proc:
        crew.track(proc)
        assert proc.stdout is not None
        # A 1 MiB pipe (Linux' limit for unprivileged processes) lets the command write on
        # while this thread compresses the previous chunk; the default 64 kB would stall it.
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        packer = compressor(run.out, ALGORITHM, level, threads=0)
        while chunk := proc.stdout.read(CHUNK):
            packer.write(chunk)
            run.done += len(chunk)
        packer.close()  # ends the zstd frame; the spool stays open
    if run.piece is not None:
        rows = reported_rows(proc.stderr_tail())
        if rows is None:
            raise PermanentError(
                f"psql did not report the rows it dumped of {run.piece.qualified}",
                proc.stderr_tail()[-2000:],
                "check the psql found by LIFEOS_PG_BIN_DIR (PostgreSQL 13 or newer)",
            )
        run.piece.rows = rows


def _write(
    commands: list[list[str]],
    pieces: Sequence[Slice | None],
    jobs: int,
    source: PgTarget,
    archive: Path,
    level: int,
    progress: ProgressFn,
    total: int,
    recipients: Sequence[Recipient] = (),
) -> tuple[int, str, list[Part]]:
    """Run the parts' commands, `jobs` at a time, each compressed into an unnamed temporary file,
    then join them [-> age] -> SHA-256 -> temporary name -> rename."""
    report = Progress("dumping", bytes_total=total)
    spool_dir = private_dir(archive.parent)
    try:
        with contextlib.ExitStack() as stack:
            runs = [
                _PartRun(args, stack.enter_context(tempfile.TemporaryFile(dir=spool_dir)), piece)
                for args, piece in zip(commands, pieces, strict=True)
            ]

            def tick() -> None:
                report.bytes_done = sum(run.done for run in runs)
                progress(report)

            run_side_by_side(
                [functools.partial(_dump_part, run, source, level) for run in runs],
                jobs,
                tick,
            )
            parts: list[Part] = []
            with atomic_writer(archive) as handle:
                hashed = HashingWriter(handle)
                secret = sealed(hashed, recipients)  # `hashed` itself when encryption is off
                for run in runs:
                    size = run.out.tell()
                    run.out.seek(0)
                    while chunk := run.out.read(CHUNK):
                        secret.write(chunk)
                    table = [run.piece.qualified] if run.piece else []
                    parts.append(Part(sum(p.size for p in parts), size, run.done, table, run.piece))
                if secret is not hashed:
                    secret.close()  # seals the final chunk
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(
                "the backup disk is full",
                f"{archive.parent}: {exc.strerror}",
                "free space or move LIFEOS_BACKUP_ROOT; the partial archive was removed",
            ) from exc
        raise
    except CommandFailed as exc:
        passing = _passing_failure(exc, source)
        if passing is None:
            raise
        raise passing from exc
    return hashed.size, hashed.hexdigest(), parts


def _passing_failure(exc: CommandFailed, source: PgTarget) -> SourceUnavailable | None:
    """A pg_dump or psql that lost its server, its connection or its life to a signal (or waited
    too long for a lock) is worth a retry; anything else it says is a mistake to fix."""
    detail = source.redact(exc.detail)
    killed = "killed by" in exc.what  # by a signal: the OOM killer, an operator, a fault
    if not killed and not any(marker in detail.lower() for marker in _PASSING):
        return None
    return SourceUnavailable(
        f"{exc.what}: it lost {source.describe()}, was killed, or could not lock its tables",
        one_line(detail)[-2000:],
        "the backup is retried with backoff",
    )
