"""The point-in-time recovery drill: the newest base backup plus WAL, recovered to "latest".

A dump drill proves one file; this proves the whole chain a loss of the primary would need: the
base backup, every archived and streamed WAL segment since, restore_command and PostgreSQL's
replay. It lays the backup out with `restore_pitr` (the same code as `restore pitr`) in a scratch
folder, starts it on a free localhost port and measures:

- RTO: seconds from the start of the restore until the recovered server answers;
- RPO: how far the recovered state was behind the primary when recovery ended. 0 when no
  transaction the primary has committed is missing from the copy (their status asked on both,
  `pg_xact_status`); else, when the primary keeps commit timestamps (`track_commit_timestamp`),
  its newest commit against the copy's `pg_last_xact_replay_timestamp()`; else an upper bound,
  the primary's clock against that timestamp (`rpo_exact` says which).

Row counts cannot be compared at the recovered point's LSN: the primary cannot be asked about
the past. So the drill samples the primary before the restore (counts in one snapshot, then its
WAL position L0), waits until the archive holds WAL up to L0, recovers, and samples it again:

- a table whose count and insert/delete counters (pg_stat_user_tables) did not change from the
  first sample to the end of the drill must have exactly that count in the copy;
- a table that only grew (no deletes counted) must lie between the two counts;
- any other table changed under the drill and is listed, not judged;
- all of this only when the copy holds the first snapshot: it reached L0, or every transaction
  that snapshot saw committed is committed in the copy (an idle primary writes records after
  its last commit that archive_timeout never ships). Otherwise counts are listed, not judged; a
  copy short of it although the archive held WAL beyond L0 fails the drill (a segment is
  missing or unreadable); one whose archive did not get there in time does not (the RPO says
  by how much it fell short).

Scratch folders are `pitr_<pid>_<process start>` under LIFEOS_DRILL_PITR_DIR: a folder whose
process is gone belongs to a killed drill, and `remove_abandoned` (run by every drill and by the
leftovers sweeper) stops its postmaster and deletes it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from lifeos_backup.core.errors import ConfigError
from lifeos_backup.core.progress import ProgressFn, ignore
from lifeos_backup.core.settings import Settings
from lifeos_backup.kinds.basebackup import wal_archive_dir
from lifeos_backup.kinds.basebackup.pgconn import connect as connect_primary
from lifeos_backup.kinds.basebackup.restore import RecoveryTarget, restore_pitr
from lifeos_backup.kinds.postgres.connect import connect
from lifeos_backup.kinds.postgres.conninfo import PgTarget
from lifeos_backup.storage.catalog import Catalog
from lifeos_backup.wal.archive import SUFFIX
from lifeos_backup.wal.names import SEGMENT, format_lsn, parse_lsn, segment_part

SCRATCH_SUBDIR = (".drill", "pitr")
SCRATCH_RE = re.compile(r"^pitr_(?P<pid>\d+)_(?P<ticks>\d+)$")
STOP_WAIT = 30.0  # seconds a scratch postmaster gets to stop after SIGQUIT, then SIGKILL
POLL = 0.5
TIMEOUT = 3600  # seconds recovery may take
ARCHIVE_MARGIN = 5  # seconds beyond archive_timeout for the archiver to store the segment
XID_WINDOW = 1000  # transactions compared by status below the copy's next id

Say = Callable[..., None]

_TABLES = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
ORDER BY 1, 2
"""
_CHANGES = """
SELECT format('%I.%I', schemaname, relname), n_tup_ins, n_tup_del FROM pg_stat_user_tables
"""


# --------------------------------------------------------------------------- scratch folders


def scratch_root(settings: Settings) -> Path:
    """LIFEOS_DRILL_PITR_DIR, else BACKUP_ROOT/.drill/pitr."""
    return settings.drill_pitr_dir or settings.backup_root.joinpath(*SCRATCH_SUBDIR)


def server_user() -> str | None:
    """The OS user the scratch server runs as: `postgres` when we are root (as restore pitr)."""
    return "postgres" if os.geteuid() == 0 else None


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first); None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def start_ticks(pid: int) -> int | None:
    """When a running process started (clock ticks since boot); None for gone or zombie."""
    fields = _proc_stat(pid)
    if not fields or fields[0] == "Z":
        return None
    return int(fields[19])


def _owner_alive(name: str) -> bool:
    match = SCRATCH_RE.match(name)
    if match is None:
        return True  # not ours to judge
    return start_ticks(int(match["pid"])) == int(match["ticks"])


def _chown(path: Path, os_user: str | None) -> None:
    if os_user:
        entry = pwd.getpwnam(os_user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def new_scratch(settings: Settings, os_user: str | None) -> Path:
    """A private folder for one drill, named after this process; the server's user owns it."""
    root = scratch_root(settings)
    if not root.exists():
        root.mkdir(mode=0o700, parents=True)
        _chown(root, os_user)
    ticks = start_ticks(os.getpid()) or 0
    path = root / f"pitr_{os.getpid()}_{ticks}"
    if path.exists():
        remove_scratch(path)
    path.mkdir(mode=0o700)
    _chown(path, os_user)
    if os_user and subprocess.run(
        ["runuser", "-u", os_user, "--", "test", "-x", str(path)], check=False,
        stdin=subprocess.DEVNULL, capture_output=True,
    ).returncode != 0:  # fmt: skip
        remove_scratch(path)
        raise ConfigError(
            f"the OS user {os_user} cannot enter the drill's scratch folder",
            f"{path}: a folder above it is closed to that user",
            "set LIFEOS_DRILL_PITR_DIR to a folder that user can reach (e.g. /var/tmp/lifeos-pitr)",
        )
    return path


def _postmaster_pid(datadir: Path) -> int | None:
    try:
        first = (datadir / "postmaster.pid").read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def _serves(pid: int, datadir: Path) -> bool:
    """Whether `pid` is a live postmaster of `datadir` (its working folder), not a reused pid."""
    if start_ticks(pid) is None:
        return False
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")) == datadir.resolve()
    except OSError:
        return False


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while start_ticks(pid) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def stop_postmaster(datadir: Path) -> None:
    """Immediate shutdown (SIGQUIT) of the scratch server of `datadir`, SIGKILL if it lingers."""
    pid = _postmaster_pid(datadir)
    if pid is None or not _serves(pid, datadir):
        return
    for sig in (signal.SIGQUIT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _wait_gone(pid, STOP_WAIT):
            return


def remove_scratch(path: Path) -> bool:
    """Stop the scratch server (if one runs) and delete the folder; True once it is gone."""
    stop_postmaster(path / "data")
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()


def remove_abandoned(settings: Settings) -> list[str]:
    """Scratch folders (and their servers) of drills whose process is gone; their names."""
    root = scratch_root(settings)
    removed: list[str] = []
    if not root.is_dir():
        return removed
    for entry in sorted(root.iterdir()):
        abandoned = SCRATCH_RE.match(entry.name) and not _owner_alive(entry.name)
        if abandoned and remove_scratch(entry):
            removed.append(entry.name)
    return removed


# --------------------------------------------------------------------------- the primary


@dataclass
class Sample:
    """Row counts of every table in one snapshot, that snapshot's transactions (every id below
    `xmax` not in `running` had finished), and the primary's WAL position after it."""

    counts: dict[str, int]
    xmax: int
    running: frozenset[int]
    lsn: int
    walfile: str | None = None
    archive_timeout: int = 0


def _tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    return [(str(n), str(r)) for n, r in conn.execute(_TABLES).fetchall()]


_SNAPSHOT = """
SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
       ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(pg_current_snapshot()) x)
"""


def count_rows(conn: psycopg.Connection[Any]) -> tuple[dict[str, int], int, frozenset[int]]:
    """Exact row counts of every ordinary table outside the system schemas, in one snapshot,
    with that snapshot's next transaction id and the ids still running in it."""
    counts: dict[str, int] = {}
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        xmax, running = conn.execute(_SNAPSHOT).fetchone() or (0, [])
        for schema, name in _tables(conn):
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))
            (counts[f"{schema}.{name}"],) = conn.execute(query).fetchone() or (0,)
    return counts, int(xmax), frozenset(int(x) for x in running or [])


def changes(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, int]]:
    """Rows inserted and deleted per table since the statistics were reset."""
    return {str(t): (int(i), int(d)) for t, i, d in conn.execute(_CHANGES).fetchall()}


# The primary's position: its WAL insert position, not the write position. With
# synchronous_commit off a committed transaction's record can still sit in the WAL buffers past
# what is written, and a drill that waited only for the written WAL would miss it. Right after a
# segment switch the insert position sits past the new segment's page header (40 bytes, no
# record): the position is then the segment's start, whose WAL lies wholly in the one before.
_LONG_PAGE_HEADER = 40
_POSITION = (
    "SELECT lsn::text, (pg_walfile_name_offset(lsn)).file_offset "
    "FROM (SELECT pg_current_wal_insert_lsn() AS lsn) AS p"
)


def wal_position(conn: psycopg.Connection[Any]) -> tuple[int, str | None]:
    """The primary's WAL position (see _POSITION) and the segment that holds the WAL up to it."""
    text, offset = conn.execute(_POSITION).fetchone() or ("0/0", 0)
    lsn = parse_lsn(str(text))
    if int(offset) <= _LONG_PAGE_HEADER:
        lsn -= int(offset)
    (walfile,) = conn.execute(
        "SELECT pg_walfile_name(%s::pg_lsn)", (format_lsn(lsn),)
    ).fetchone() or (None,)
    return lsn, str(walfile) if walfile else None


def sample(conn: psycopg.Connection[Any]) -> Sample:
    counts, xmax, running = count_rows(conn)
    lsn, walfile = wal_position(conn)
    (timeout,) = conn.execute(
        "SELECT EXTRACT(EPOCH FROM current_setting('archive_timeout')::interval)::int"
    ).fetchone() or (0,)
    return Sample(counts, xmax, running, lsn, walfile, int(timeout or 0))


def committed(conn: psycopg.Connection[Any], low: int, high: int) -> set[int]:
    """Transaction ids in [low, high) that committed, as this server knows them."""
    rows = conn.execute(
        "SELECT x FROM generate_series(%s::bigint, %s::bigint - 1) x "
        "WHERE pg_xact_status(x::text::xid8) = 'committed'",
        (low, high),
    ).fetchall()
    return {int(x) for (x,) in rows}


def archive_reaches(settings: Settings, lsn: int, walfile: str | None) -> bool:
    """Whether the archive (or the stream, about to seal it) holds WAL up to `lsn`."""
    archive = wal_archive_dir(settings)
    if walfile and archive.is_dir():
        for path in archive.iterdir():
            name = path.name.removesuffix(SUFFIX)
            finished = path.name.endswith(SUFFIX) and SEGMENT.match(name)
            if finished and segment_part(name) >= segment_part(walfile):
                return True
    if settings.wal_stream:
        from lifeos_backup.kinds.basebackup.streaming import slot_status

        with contextlib.suppress(Exception):  # no stream or no view of it: the archive decides
            written = slot_status(settings).write_lsn
            return written is not None and parse_lsn(written) >= lsn
    return False


def wait_for_archive(settings: Settings, start: Sample, say: Say) -> bool:
    """Wait until the archive holds WAL up to the start sample's position. At most
    LIFEOS_DRILL_PITR_WAL_WAIT, and no longer than the primary's archive_timeout (plus a
    margin): an idle primary writes only records that do not switch segments, and its data
    is then in the archive already (the transaction check in `lacks` tells)."""
    wait = settings.drill_pitr_wal_wait
    if start.archive_timeout > 0:
        wait = min(wait, start.archive_timeout + ARCHIVE_MARGIN)
    deadline = time.monotonic() + wait
    while not archive_reaches(settings, start.lsn, start.walfile):
        if time.monotonic() >= deadline:
            say("the WAL archive did not reach %s within %d s", format_lsn(start.lsn), wait)
            return False
        time.sleep(POLL)
    return True


# --------------------------------------------------------------------------- the scratch copy


def recovered_lsn(datadir: Path) -> int | None:
    """Where recovery ended: the switch point in the newest timeline history file."""
    histories = sorted((datadir / "pg_wal").glob("*.history"))
    if not histories:
        return None
    lines = [ln.split() for ln in histories[-1].read_text().splitlines() if ln.strip()]
    return parse_lsn(lines[-1][1]) if lines and len(lines[-1]) > 1 else None


def scratch_target(settings: Settings, sockdir: Path, port: int) -> PgTarget:
    """The drill's database in the scratch copy: over its private socket, trusted there."""
    params = PgTarget.from_settings(settings).params
    kept = {k: params[k] for k in ("dbname", "user", "connect_timeout") if k in params}
    return PgTarget({**kept, "host": str(sockdir), "port": str(port), "sslmode": "disable",
                     "application_name": "lifeos-backup-drill"})  # fmt: skip


def scratch_settings(scratch: Path) -> list[str]:
    """What the copy must not take over from the primary: its addresses, logins and TLS."""
    hba = scratch / "pg_hba.conf"
    return [
        "listen_addresses = 'localhost'",
        "hba_file = '" + str(hba).replace("'", "''") + "'",
        "ssl = off",
        "synchronous_standby_names = ''",
    ]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def scratch_cluster(settings: Settings, say: Say) -> Iterator[Path]:
    """A fresh scratch folder, removed with its server whatever happens in the block."""
    os_user = server_user()
    gone = remove_abandoned(settings)
    if gone:
        say("removed the scratch clusters of interrupted drills: %s", ", ".join(gone))
    scratch = new_scratch(settings, os_user)
    try:
        for name in ("sock",):
            (scratch / name).mkdir(mode=0o700)
            _chown(scratch / name, os_user)
        fd = os.open(scratch / "pg_hba.conf", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("# the drill's scratch copy: its own socket only\nlocal all all trust\n")
        _chown(scratch / "pg_hba.conf", os_user)
        yield scratch
    finally:
        if remove_scratch(scratch):
            say("stopped and removed the scratch cluster %s", scratch)
        else:
            say("could not remove the scratch cluster %s", scratch)


# --------------------------------------------------------------------------- judging


def compare_counts(
    before: dict[str, int],
    recovered: dict[str, int],
    after: dict[str, int],
    changes_before: dict[str, tuple[int, int]],
    changes_after: dict[str, tuple[int, int]],
    reached_start: bool,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Each table's verdict (module docstring) and the problems among them."""
    tables: list[dict[str, Any]] = []
    problems: list[str] = []
    for table in sorted(before):
        first, last, got = before[table], after.get(table), recovered.get(table)
        quiet = last == first and changes_before.get(table) == changes_after.get(table)
        grew = (
            last is not None
            and last >= first
            and (changes_before.get(table) or (0, 0))[1] == (changes_after.get(table) or (0, 0))[1]
        )
        if not reached_start:
            verdict = "not compared"
        elif got is None:
            verdict = "MISSING"
            problems.append(f"{table}: missing from the recovered copy")
        elif quiet:
            verdict = "equal" if got == first else "MISMATCH"
            if got != first:
                problems.append(f"{table}: {got} rows recovered, the primary has {first}")
        elif grew and last is not None:
            verdict = "within" if first <= got <= last else "OUTSIDE"
            if verdict == "OUTSIDE":
                problems.append(
                    f"{table}: {got} rows recovered, the primary grew from {first} to {last}"
                )
        else:
            verdict = "changed"
        tables.append(
            {"table": table, "primary_before": first, "primary_after": last,
             "recovered": got, "verdict": verdict}
        )  # fmt: skip
    return tables, problems


@dataclass
class PrimaryEnd:
    """The primary when recovery had ended."""

    now: datetime
    lsn: int
    next_xid: int
    last_commit: datetime | None


def primary_end(conn: psycopg.Connection[Any]) -> PrimaryEnd:
    lsn, _walfile = wal_position(conn)
    now, xid, tracked = conn.execute(
        "SELECT clock_timestamp(), "
        "pg_snapshot_xmax(pg_current_snapshot())::text::bigint, "
        "current_setting('track_commit_timestamp')"
    ).fetchone() or (datetime.now(UTC), 0, "off")
    last = None
    if tracked == "on":
        with contextlib.suppress(psycopg.Error):
            (last,) = conn.execute("SELECT timestamp FROM pg_last_committed_xact()").fetchone() or (
                None,
            )
    return PrimaryEnd(now, lsn, int(xid), last)


def lacks(
    primary: psycopg.Connection[Any],
    copy: psycopg.Connection[Any],
    copy_next: int,
    below: int,
    running: frozenset[int] = frozenset(),
) -> list[int] | None:
    """Transactions committed on the primary (ids below `below`, but `running`) that the copy
    does not hold as committed; None when too many ids lie between them to ask each.

    Ids at least XID_WINDOW below the copy's next id are taken as settled in both (a
    transaction that old still running when recovery ended would be missed).
    """
    low = max(3, min(copy_next, below) - XID_WINDOW)
    if below - low > 10 * XID_WINDOW:
        return None
    theirs = committed(primary, low, below) - running
    ours = committed(copy, low, min(copy_next, below))
    return sorted(theirs - ours)


def recovery_point_objective(
    end: PrimaryEnd, missing: list[int] | None, replayed: datetime | None, base_end: datetime
) -> tuple[float, bool, str]:
    """(seconds behind, exact?, how it was found) of the recovered state against the primary."""
    if missing == []:
        return 0.0, True, "no transaction committed on the primary is missing from the copy"
    point = replayed or base_end
    if end.last_commit is not None:
        seconds = max(0.0, (end.last_commit - point).total_seconds())
        return seconds, True, "the primary's newest commit against the last replayed one"
    seconds = max(0.0, (end.now - point).total_seconds())
    return seconds, False, "the primary's clock against the last replayed commit (upper bound)"


# --------------------------------------------------------------------------- the drill


@dataclass
class Findings:
    """What the drill found; filled as it goes, so a failure still reports what was done."""

    details: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    restore_s: float | None = None


def drill_pitr(
    settings: Settings,
    catalog: Catalog,
    backup_id: str,
    say: Say,
    found: Findings,
    progress: ProgressFn = ignore,
) -> None:
    """Recover `backup_id` plus every archived WAL to latest in a scratch cluster; judge it."""
    details = found.details
    with connect_primary(settings) as primary, scratch_cluster(settings, say) as scratch:
        changes_before = changes(primary)
        start = sample(primary)
        details["primary_lsn_at_start"] = format_lsn(start.lsn)
        say("primary at %s, %d tables counted", format_lsn(start.lsn), len(start.counts))
        waited = time.monotonic()
        archived = wait_for_archive(settings, start, say)
        details["archive_wait_s"] = round(time.monotonic() - waited, 2)

        datadir, sockdir, port = scratch / "data", scratch / "sock", _free_port()
        details.update(scratch=str(scratch), port=port)
        say("recovering %s to latest into %s (port %d)", backup_id, datadir, port)
        clock = time.monotonic()
        result = restore_pitr(
            settings, catalog, RecoveryTarget(), datadir, port=port, start=True,
            backup_id=backup_id, wal_command=settings.drill_pitr_wal_command,
            os_user=server_user(), socket_dir=sockdir, timeout=TIMEOUT,
            progress=progress, extra_settings=scratch_settings(scratch),
        )  # fmt: skip
        target = scratch_target(settings, sockdir, port)
        with connect(target, autocommit=True) as copy:
            replayed, copy_next = copy.execute(
                "SELECT pg_last_xact_replay_timestamp(), "
                "pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
            ).fetchone() or (None, 0)
            found.restore_s = time.monotonic() - clock
            end = primary_end(primary)
            after, _xmax, _running = count_rows(primary)
            recovered, _xmax, _running = count_rows(copy)
            missing = lacks(primary, copy, int(copy_next), end.next_xid)
            missing_at_start = lacks(primary, copy, int(copy_next), start.xmax, start.running)
        reached = recovered_lsn(datadir)
        say("recovered in %.2f s to %s, last transaction replayed at %s", found.restore_s,
            format_lsn(reached) if reached is not None else "?", replayed)  # fmt: skip
        details.update(
            restore_s=round(found.restore_s, 3),
            recovered_lsn=format_lsn(reached) if reached is not None else None,
            last_replayed_at=replayed.isoformat() if replayed else None,
            stop_line=result.stop_line,
            wal_behind_bytes=max(0, end.lsn - reached) if reached is not None else None,
            transactions_missing=None if missing is None else len(missing),
        )
        rpo, exact, basis = recovery_point_objective(
            end, missing, replayed, _base_end(catalog, settings, backup_id)
        )
        details.update(rpo_s=round(rpo, 3), rpo_exact=exact, rpo_basis=basis)
        say("recovery point %.3f s behind the primary (%s)", rpo, basis)
    reached_start = (reached is not None and reached >= start.lsn) or missing_at_start == []
    if not reached_start and archived:
        found.problems.append(
            f"recovery ended at {details['recovered_lsn']}, before the primary's position "
            f"{format_lsn(start.lsn)} at the drill's start, though the archive holds WAL beyond "
            "it: a segment is missing or unreadable"
        )
    elif not reached_start:
        say("the copy ends before the primary's position at the start: counts not judged")
    tables, problems = compare_counts(
        start.counts, recovered, after, changes_before, _changes_now(settings), reached_start
    )
    details.update(tables=tables, counts_judged=reached_start)
    for row in tables:
        say("  %-40s primary %s..%s  recovered %s  %s", row["table"], row["primary_before"],
            row["primary_after"], row["recovered"], row["verdict"])  # fmt: skip
    found.problems.extend(problems)


def _changes_now(settings: Settings) -> dict[str, tuple[int, int]]:
    """The counters once more, after the scratch cluster is gone (seconds after the counts)."""
    with connect_primary(settings) as primary:
        return changes(primary)


def _base_end(catalog: Catalog, settings: Settings, backup_id: str) -> datetime:
    from lifeos_backup.formats.manifest import manifest_path, read_manifest

    row = catalog.get(backup_id)
    return read_manifest(manifest_path(settings.backup_root / row.path, row.id)).finished_at
