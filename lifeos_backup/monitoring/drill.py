"""Restore drills: prove that the newest good backup of a kind really restores, and time it.

A backup is only worth the restore it was proven by. `verify` checks an archive against its
manifest; a drill goes further and does what a recovery would do:

- PostgreSQL: restore into a scratch database `<db>_drill_<UTC timestamp>` on the source server,
  compare every table's exact row count with the counts taken in the dump's snapshot, run the
  configured sanity queries and (optionally) the app's migration command against it, and ALWAYS
  drop it again (`finally`). A worker killed mid-drill cannot run its `finally`, so every drill
  first drops scratch databases of earlier drills that are older than LEFTOVER_AGE.
- JSON: extract into a private temporary folder (every member's SHA-256 is checked on the way),
  then parse every `.json` file: a file the app could not read is not a backup of it.
- basebackup (point-in-time recovery, scheduled on its own): the newest base backup plus all WAL
  recovered to latest in a scratch cluster, with its RPO and RTO measured and row counts judged
  against the primary (lifeos_backup.kinds.basebackup.drill).

Each drill is a row in the catalog (`drills`) and a folder `<root>/drills/<timestamp>_<kind>/`
holding `report.json` and a readable `drill.log`. The restore time measured here is the current
recovery-time estimate (RTO) that `status` and the metrics report.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from lifeos_backup.core.errors import ConfigError, LifeosError, NotFound, PermanentError
from lifeos_backup.core.fsutil import DIR_MODE, atomic_writer, private_dir, write_json_atomic
from lifeos_backup.core.procs import pid_alive
from lifeos_backup.core.progress import ProgressFn, ignore
from lifeos_backup.core.settings import Settings
from lifeos_backup.formats.manifest import Manifest, read_manifest
from lifeos_backup.jobs.backups import locate
from lifeos_backup.monitoring import records
from lifeos_backup.storage.catalog import Backup, Catalog
from lifeos_backup.storage.catalog.store import VERIFIED, utcnow

log = logging.getLogger(__name__)

DRILLS_DIR = "drills"  # under the backup root: one folder per drill
WORKSPACE = ".drill"  # under the backup root: JSON drills extract here (same disk as backups)
LEFTOVER_AGE = timedelta(hours=1)  # scratch databases older than this belong to a dead drill
SCRATCH_INFIX = "_drill_"
SCRATCH_TIME = "%Y%m%d_%H%M%S"
SCRATCH_LIKE = r"%\_drill\_%"  # LIKE pattern ('_' alone matches any character)
SCRATCH_RE = re.compile(r"^(?P<base>.+)_drill_(?P<ts>\d{8}_\d{6})$")
MAX_IDENTIFIER = 63  # PostgreSQL truncates longer names; ours must stay exact
MAX_PROBLEMS = 20  # problems listed in a report (the count is always complete)


class DrillFailed(PermanentError):
    """A drill found that a backup does not restore as its manifest promises."""


@dataclass
class Outcome:
    """What a kind's drill found: the restore time, details for the report, and problems."""

    restore_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


@dataclass
class DrillResult:
    """One finished drill, as recorded in the catalog and in its report folder."""

    drill_id: int
    kind: str
    backup_id: str
    status: str
    started_at: datetime
    finished_at: datetime
    duration_s: float
    restore_s: float | None
    report_dir: Path
    details: dict[str, Any]
    error: str | None

    @property
    def passed(self) -> bool:
        return self.status == records.PASSED

    def as_dict(self) -> dict[str, Any]:
        return {
            "drill_id": self.drill_id,
            "kind": self.kind,
            "backup_id": self.backup_id,
            "status": self.status,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "duration_s": round(self.duration_s, 3),
            "restore_s": None if self.restore_s is None else round(self.restore_s, 3),
            "report_dir": str(self.report_dir),
            "details": self.details,
            "error": self.error,
        }


class DrillLog:
    """The lines of `drill.log` (UTC time first), also sent to the logger."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, message: str, *args: object) -> None:
        text = message % args if args else message
        self.lines.append(f"{utcnow():%Y-%m-%d %H:%M:%S}Z {text}")
        log.info("drill: %s", text)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


Say = Callable[..., None]
# A kind's drill fills in the Outcome it is given, so that what it found before an exception
# (the scratch database's name, whether it was dropped) still reaches the report.
KindDrill = Callable[[Settings, Catalog, Path, Manifest, Say, ProgressFn, Outcome], None]
# Drilled on their own schedule (LIFEOS_SCHEDULE_PITR_DRILL), not with every other kind.
SEPARATE = ("basebackup",)


# ----------------------------------------------------------------------------- choosing


def drillable_kinds() -> tuple[str, ...]:
    return tuple(_DRILLS)


def choose_backup(
    catalog: Catalog, kind: str | None = None, backup_id: str | None = None
) -> Backup:
    """The backup to drill: `backup_id` (must be verified), else the kind's newest verified."""
    if backup_id:
        row = catalog.get(backup_id)
        if kind and row.kind != kind:
            raise ConfigError(f"backup {backup_id} is a {row.kind} backup, not {kind}")
        if row.status != VERIFIED:
            raise PermanentError(
                f"backup {backup_id} is {row.status}, not verified",
                hint="a drill proves a good backup; choose a verified one (lifeos-backup list)",
            )
        return row
    if not kind:
        raise ConfigError("no kind and no backup id given to drill")
    rows = catalog.list(kind=kind, statuses=(VERIFIED,))
    if not rows:
        raise NotFound(
            f"no verified {kind} backup to drill",
            hint=f"run `lifeos-backup backup {kind} --wait` first",
        )
    return rows[0]


def kinds_to_drill(catalog: Catalog) -> list[str]:
    """Every drillable kind that has a verified backup (the weekly drill runs these), but the
    point-in-time recovery drill, which has its own schedule."""
    return [k for k in _DRILLS if k not in SEPARATE and catalog.list(kind=k, statuses=(VERIFIED,))]


# ----------------------------------------------------------------------------- running


def run_drill(
    settings: Settings,
    catalog: Catalog,
    kind: str | None = None,
    backup_id: str | None = None,
    progress: ProgressFn = ignore,
) -> DrillResult:
    """Drill one backup and record the result; a failed drill is a result, not an exception.

    Call while holding the kind's drill lock (`drill:<kind>`): the clean-up of leftovers assumes
    no other drill of the kind runs.
    """
    row = choose_backup(catalog, kind, backup_id)
    if row.kind not in _DRILLS:
        raise ConfigError(
            f"no restore drill for {row.kind} backups",
            hint=f"drills exist for: {', '.join(_DRILLS)}",
        )
    stale = records.fail_stale(catalog, row.kind)
    started = utcnow()
    run = _Run(
        settings=settings,
        catalog=catalog,
        row=row,
        started=started,
        report_dir=_report_dir(settings, started, row.kind),
        drill_id=records.start(catalog, row.kind, row.id, started),
    )
    if stale:
        run.say("marked interrupted drills %s failed", stale)
    run.say(
        "drill %d: %s backup %s (created %s, %s bytes)",
        run.drill_id,
        row.kind,
        row.id,
        row.created_at.isoformat(),
        row.size,
    )
    try:
        _row, archive, mpath = locate(settings, catalog, row.id)
        _DRILLS[row.kind](
            settings, catalog, archive, read_manifest(mpath), run.say, progress, run.outcome
        )
    except LifeosError as exc:
        return run.finish(str(exc))
    except BaseException as exc:  # also a soft time limit or shutdown: recorded, then re-raised
        run.finish(f"{type(exc).__name__}: {exc}")
        raise
    problems = run.outcome.problems
    if problems:
        return run.finish(f"{len(problems)} problem(s): " + "; ".join(problems[:3]))
    return run.finish(None)


@dataclass
class _Run:
    """One drill in progress: what `finish` needs to record it in the catalog and on disk."""

    settings: Settings
    catalog: Catalog
    row: Backup
    started: datetime
    report_dir: Path
    drill_id: int
    say: DrillLog = field(default_factory=DrillLog)
    outcome: Outcome = field(default_factory=Outcome)
    clock: float = field(default_factory=time.monotonic)

    def finish(self, error: str | None) -> DrillResult:
        outcome, say = self.outcome, self.say
        status = records.FAILED if error else records.PASSED
        details = {
            "backup_created_at": self.row.created_at.isoformat(),
            "size": self.row.size,
            **outcome.details,
            "problems": outcome.problems[:MAX_PROBLEMS],
            "problem_count": len(outcome.problems),
        }
        if outcome.restore_s is not None:
            say("restore took %.2f s (the current recovery-time estimate)", outcome.restore_s)
        say("drill %s%s", status.upper(), f": {error}" if error else "")
        result = DrillResult(
            drill_id=self.drill_id,
            kind=self.row.kind,
            backup_id=self.row.id,
            status=status,
            started_at=self.started,
            finished_at=utcnow(),
            duration_s=time.monotonic() - self.clock,
            restore_s=outcome.restore_s,
            report_dir=self.report_dir,
            details=details,
            error=error,
        )
        try:
            write_json_atomic(self.report_dir / "report.json", result.as_dict())
            with atomic_writer(self.report_dir / "drill.log") as handle:
                handle.write(say.text().encode())
            report_path: str | None = str(self.report_dir.relative_to(self.settings.backup_root))
        except OSError as exc:  # e.g. a full disk: the catalog row still tells the result
            log.error("could not write the drill report in %s: %s", self.report_dir, exc)
            report_path = None
        records.finish(
            self.catalog,
            self.drill_id,
            status=status,
            finished_at=result.finished_at,
            duration_s=result.duration_s,
            restore_s=result.restore_s,
            report_path=report_path,
            details=details,
            error=error[:4000] if error else None,
        )
        return result


def _report_dir(settings: Settings, started: datetime, kind: str) -> Path:
    """`drills/<UTC timestamp>_<kind>`, with a counter if two drills share the second."""
    root = private_dir(settings.backup_root / DRILLS_DIR)
    base = f"{started:%Y%m%d_%H%M%S}_{kind}"
    path, number = root / base, 1
    while path.exists():
        number += 1
        path = root / f"{base}-{number}"
    return private_dir(path)


# ----------------------------------------------------------------------------- JSON


def drill_json(
    settings: Settings,
    _catalog: Catalog,
    archive: Path,
    manifest: Manifest,
    say: Say,
    progress: ProgressFn,
    outcome: Outcome,
) -> None:
    """Extract into a private folder (checking every checksum), then parse every .json file."""
    from lifeos_backup.kinds.json.restore import restore_archive

    workspace = private_dir(settings.backup_root / WORKSPACE)
    _remove_abandoned(workspace, say)
    target = workspace / f"{manifest.backup_id}-{os.getpid()}"
    try:
        say("extracting %s into %s (every member's SHA-256 checked)", archive.name, target)
        clock = time.monotonic()
        files = restore_archive(archive, manifest, target, False, progress)
        outcome.restore_s = time.monotonic() - clock
        say("extracted %d files in %.2f s; checksums match the manifest", files, outcome.restore_s)
        parsed, invalid = 0, []
        for path in sorted(target.rglob("*.json")):
            if path.is_symlink() or not path.is_file():
                continue
            try:
                json.loads(path.read_bytes())
                parsed += 1
            except (ValueError, UnicodeDecodeError) as exc:
                invalid.append(f"{path.relative_to(target)} ({exc})")
        # Every member's SHA-256 matched the manifest, so a file that does not parse did not
        # parse when it was backed up either: the copy is faithful, the app's file was broken
        # (an empty configs/x.json, say). Reported, not a failed drill.
        say("parsed %d .json files; %d not valid JSON, as at backup time", parsed, len(invalid))
        for item in invalid:
            say("not valid JSON, already at backup time: %s", item)
        outcome.details.update(files_restored=files, json_files_parsed=parsed)
        if invalid:
            outcome.details["invalid_json_at_backup"] = invalid
    finally:
        _remove_tree(target)


def _remove_tree(path: Path) -> None:
    """Restored folders may be read-only (modes are restored): open them up, then remove."""
    if not path.exists():
        return
    for folder, _dirs, _files in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(folder, DIR_MODE)
    shutil.rmtree(path, ignore_errors=True)


def _remove_abandoned(workspace: Path, say: Say) -> None:
    """Extraction folders of drills whose process is gone (killed mid-drill)."""
    for path in workspace.iterdir():
        pid = path.name.rpartition("-")[2]
        if pid.isdigit() and not pid_alive(int(pid)):
            say("removing the extraction folder of an interrupted drill: %s", path.name)
            _remove_tree(path)


# ----------------------------------------------------------------------------- PostgreSQL


def scratch_name(database: str, now: datetime) -> str:
    """`<db>_drill_<UTC timestamp>`, the source name shortened to fit PostgreSQL's 63 bytes."""
    suffix = f"{SCRATCH_INFIX}{now:{SCRATCH_TIME}}"
    base = database.encode()[: MAX_IDENTIFIER - len(suffix)].decode(errors="ignore")
    return f"{base or 'lifeos'}{suffix}"


def leftover_scratch(names: list[str], now: datetime) -> list[str]:
    """Scratch databases of earlier drills, older than LEFTOVER_AGE (their drill is dead)."""
    old: list[str] = []
    for name in names:
        match = SCRATCH_RE.match(name)
        if not match:
            continue
        try:
            made = datetime.strptime(match["ts"], SCRATCH_TIME).replace(tzinfo=now.tzinfo)
        except ValueError:
            continue
        if now - made > LEFTOVER_AGE:
            old.append(name)
    return old


def drill_postgres(
    settings: Settings,
    _catalog: Catalog,
    archive: Path,
    manifest: Manifest,
    say: Say,
    progress: ProgressFn,
    outcome: Outcome,
) -> None:
    """Restore into a scratch database, compare row counts, sanity queries, migration; drop."""
    from lifeos_backup.kinds.postgres.conninfo import PgTarget
    from lifeos_backup.kinds.postgres.restore import restore_postgres

    server = PgTarget.from_settings(settings)
    outcome.details["leftovers_dropped"] = drop_leftovers(server, utcnow(), say)
    source = str(manifest.facts.get("database") or server.params.get("dbname") or "lifeos")
    scratch = scratch_name(source, utcnow())
    target = server.with_database(scratch)
    outcome.details["scratch_database"] = scratch
    try:
        say("restoring %s into scratch database %s", archive.name, scratch)
        clock = time.monotonic()
        report = restore_postgres(
            archive, manifest, settings, scratch, create=True, progress=progress
        )
        outcome.restore_s = time.monotonic() - clock
        tables = []
        for count in report.counts:
            tables.append(
                {"table": count.table, "expected": count.expected, "restored": count.restored}
            )
            mark = "ok" if count.matches else "MISMATCH"
            say(
                "  %-40s manifest %8d  restored %8s  %s",
                count.table,
                count.expected,
                count.restored,
                mark,
            )
            if not count.matches:
                found = "missing" if count.restored is None else f"{count.restored} rows"
                outcome.problems.append(f"{count.table}: {found}, manifest says {count.expected}")
        outcome.details["tables"] = tables
        outcome.details["sanity_queries"] = _sanity_queries(target, settings, outcome, say)
        if settings.drill_migrate_command and settings.drill_migrate_command.strip():
            outcome.details["migration"] = _migrate(target, settings, outcome, say)
    finally:
        outcome.details["scratch_dropped"] = drop_database(target, say)
    if not outcome.details["scratch_dropped"]:
        outcome.problems.append(f"scratch database {scratch} could not be dropped")


def _sanity_queries(
    target: Any, settings: Settings, outcome: Outcome, say: Say
) -> list[dict[str, Any]]:
    """Each configured query must return a row whose first column is true (or non-zero)."""
    import psycopg

    from lifeos_backup.kinds.postgres.connect import connect, one_line

    results: list[dict[str, Any]] = []
    if not settings.drill_sanity_queries:
        return results
    with connect(target, autocommit=True) as conn:
        for query in settings.drill_sanity_queries:
            try:
                row = conn.execute(query).fetchone()  # from settings
                value = None if row is None else row[0]
                ok = bool(value)
                detail = repr(value)
            except psycopg.Error as exc:
                ok, detail = False, target.redact(one_line(str(exc)))
            results.append({"query": query, "ok": ok, "result": detail})
            say("  sanity query %s: %s -> %s", "ok" if ok else "FAILED", query, detail)
            if not ok:
                outcome.problems.append(f"sanity query failed: {query} -> {detail}")
    return results


def _migrate(target: Any, settings: Settings, outcome: Outcome, say: Say) -> dict[str, Any]:
    """The app's migration command with the scratch database's URL in its environment."""
    from lifeos_backup.core import procs

    command = settings.drill_migrate_command or ""
    args = shlex.split(command)
    env = {settings.drill_migrate_url_env: scratch_url(target)}
    say("running the migration command %r in %s", command, settings.app_dir)
    clock = time.monotonic()
    try:
        done = procs.run(
            args,
            env=env,
            cwd=settings.app_dir,
            timeout=settings.drill_migrate_timeout,
            capture_stdout=True,
        )
    except LifeosError as exc:
        say("  migration FAILED: %s", exc)
        outcome.problems.append(f"migration command failed: {exc}")
        return {"command": command, "ok": False, "error": str(exc)}
    seconds = time.monotonic() - clock
    tail = (done.stdout or b"").decode(errors="replace").strip().splitlines()[-5:]
    for line in tail:
        say("  | %s", line)
    say("  migration ok in %.2f s", seconds)
    return {"command": command, "ok": True, "seconds": round(seconds, 3)}


def scratch_url(target: Any) -> str:
    """A postgresql:// URL of the scratch database, password included (environment only)."""
    params = dict(target.params)
    user = params.pop("user", "")
    host = params.pop("host", "")
    port = params.pop("port", "")
    dbname = params.pop("dbname", "")
    password = target.password.get_secret_value() if target.password else ""
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    netloc = auth + "@" if auth else ""
    if host and not host.startswith("/") and "," not in host:
        netloc += f"[{host}]" if ":" in host else host
        netloc += f":{port}" if port else ""
    else:
        if host:
            params["host"] = host
        if port:
            params["port"] = port
    query = urlencode(params)
    return f"postgresql://{netloc}/{quote(dbname, safe='')}" + (f"?{query}" if query else "")


def _maintenance(server: Any) -> Any:
    from lifeos_backup.kinds.postgres.restore import MAINTENANCE_DB

    return server.with_params(dbname=MAINTENANCE_DB)


def drop_leftovers(server: Any, now: datetime, say: Say) -> list[str]:
    """Drop scratch databases of drills that died (worker killed) more than an hour ago."""
    from lifeos_backup.kinds.postgres.connect import connect

    with connect(_maintenance(server), autocommit=True) as conn:
        names = [
            str(name)
            for (name,) in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s",
                (SCRATCH_LIKE,),
            )
        ]
    dropped = []
    for name in leftover_scratch(names, now):
        say("dropping the scratch database of an interrupted drill: %s", name)
        if drop_database(server.with_params(dbname=name), say):
            dropped.append(name)
    return dropped


def drop_database(target: Any, say: Say) -> bool:
    """DROP DATABASE ... WITH (FORCE); True once it is gone. Never raises: it runs in finally."""
    from psycopg import sql

    from lifeos_backup.kinds.postgres.connect import connect

    name = target.params.get("dbname", "")
    try:
        with connect(_maintenance(target), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            gone = (
                conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
                is None
            )
    except Exception as exc:
        say("could not drop scratch database %s: %s", name, target.redact(str(exc)))
        return False
    say("dropped scratch database %s", name)
    return gone


# ----------------------------------------------------------------------------- point in time


def drill_basebackup(
    settings: Settings,
    catalog: Catalog,
    _archive: Path,
    manifest: Manifest,
    say: Say,
    progress: ProgressFn,
    outcome: Outcome,
) -> None:
    """Recover the base backup plus all WAL to latest in a scratch cluster: RTO, RPO, counts.

    lifeos_backup.kinds.basebackup.drill does the work (and explains the comparison); what it
    found reaches the report even when it fails half-way.
    """
    from lifeos_backup.kinds.basebackup.drill import Findings, drill_pitr

    found = Findings(outcome.details, outcome.problems)
    try:
        drill_pitr(settings, catalog, manifest.backup_id, say, found, progress)
    finally:
        outcome.restore_s = found.restore_s


_DRILLS: dict[str, KindDrill] = {
    "json": drill_json,
    "postgres": drill_postgres,
    "basebackup": drill_basebackup,
}
