"""Writing a PostgreSQL archive: `pg_dump -Fc -Z0` through zstd and SHA-256, in one pass.

pg_dump writes the custom format uncompressed to a pipe; this process compresses the stream with
multi-threaded zstd, hashes the compressed bytes and writes them under a temporary name
(fsutil.atomic_writer), in 1 MiB chunks: no uncompressed copy on disk, bounded memory whatever the
database size. docs/decisions.md has the measurements behind the format and the level.

Order matters for the failure modes: connect (unreachable: retryable; bad login: permanent), then
compare pg_dump's version with the server's, and only then create the file. Whatever fails later
(pg_dump killed, disk full, lock lost) removes the temporary file before the error propagates.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from lifeos_backup import procs
from lifeos_backup.crypto import Recipient, parse_recipients, sealed
from lifeos_backup.errors import CommandFailed, ConfigError, PermanentError, SourceUnavailable
from lifeos_backup.fsutil import atomic_writer
from lifeos_backup.postgres.connect import connect, one_line
from lifeos_backup.postgres.conninfo import PgTarget, postgres_configured
from lifeos_backup.postgres.snapshot import (
    DatabaseFacts,
    catalog_facts,
    count_all,
    exported_snapshot,
)
from lifeos_backup.postgres.tools import Tool, require_dump_not_older, tool
from lifeos_backup.progress import Progress, ProgressFn
from lifeos_backup.settings import Settings
from lifeos_backup.streams import CHUNK, HashingWriter, compressor

log = logging.getLogger(__name__)

ALGORITHM = "zstd"
FORMAT = "pg_dump custom format (-Fc -Z0) compressed with zstd"
# pg_dump waits this long for its ACCESS SHARE locks (e.g. behind a migration), then fails; the
# failure is retryable, so a busy moment delays the backup instead of hanging it for hours.
LOCK_WAIT = "120s"
# pg_dump stderr fragments that mean the server went away or was busy: worth a retry.
_PASSING = (
    "could not connect",
    "connection to server",
    "server closed the connection",
    "terminating connection",
    "could not obtain lock",
    "the database system is",
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

    def manifest_facts(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "pg_dump_version": self.pg_dump.version,
            "pg_dump_major": self.pg_dump.major,
            "dump_bytes": self.dump_bytes,
            **self.facts.as_facts(),
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
    """Dump the configured database into `archive` (atomically) and collect its facts."""
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
            facts = catalog_facts(conn)
            source = pinned(target, conn)
            args = dump_args(pg_dump, source, snapshot)
            with ThreadPoolExecutor(1, thread_name_prefix="row-count") as pool:
                # Counting runs beside pg_dump, in the same snapshot, on the exporting connection.
                counting = pool.submit(count_all, conn, facts.tables)
                try:
                    size, sha256, dump_bytes = _write(
                        args, source, archive, level, progress, facts.database_size,
                        parse_recipients(settings.encryption_recipients),
                    )
                except BaseException:
                    _stop(conn, counting)
                    raise
                counting.result()
    log.info("dumped %s: %d bytes of dump, %d bytes archived", source.describe(), dump_bytes, size)
    return DumpResult(size, sha256, level, dump_bytes, source.describe(), facts, pg_dump)


def _stop(conn: psycopg.Connection[tuple], counting: Future[None]) -> None:
    """Cancel the row counting of a failed dump; its own error is moot, the dump's is raised."""
    with contextlib.suppress(Exception):
        conn.cancel_safe(timeout=5)
    wait([counting], timeout=30)


def _write(
    args: list[str],
    source: PgTarget,
    archive: Path,
    level: int,
    progress: ProgressFn,
    total: int,
    recipients: Sequence[Recipient] = (),
) -> tuple[int, str, int]:
    """Stream pg_dump's stdout -> zstd [-> age] -> SHA-256 -> temporary file -> rename."""
    report = Progress("dumping", bytes_total=total)
    try:
        with atomic_writer(archive) as handle:
            hashed = HashingWriter(handle)
            secret = sealed(hashed, recipients)  # `hashed` itself when encryption is off
            with procs.spawn(args, env=source.env()) as proc:
                assert proc.stdout is not None
                packer = compressor(secret, ALGORITHM, level)
                while chunk := proc.stdout.read(CHUNK):
                    packer.write(chunk)
                    report.bytes_done += len(chunk)
                    progress(report)
                packer.close()  # ends the zstd frame; `hashed` and the file stay open
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
    return hashed.size, hashed.hexdigest(), report.bytes_done


def _passing_failure(exc: CommandFailed, source: PgTarget) -> SourceUnavailable | None:
    """A pg_dump that lost its server (or waited too long for a lock) is worth a retry."""
    detail = source.redact(exc.detail)
    if not any(marker in detail for marker in _PASSING):
        return None
    return SourceUnavailable(
        f"pg_dump lost {source.describe()} or could not lock its tables",
        one_line(detail)[-2000:],
        "the backup is retried with backoff",
    )
