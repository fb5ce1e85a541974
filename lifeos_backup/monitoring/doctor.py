"""`lifeos-backup doctor`: is everything a backup needs in place? One line per check.

Each check is a plain function of the settings returning `Check`s (name, state, detail, fix).
`run_checks` runs them side by side, each in a daemon thread with its own time limit, so a hung
Redis, database or bucket turns into a FAIL line after a few seconds instead of hanging the
command. The rules come from where the system already keeps them: Redis is pinged as `status` and
`up` ping it (monitoring.broker), workers are found through the client's remote control, pg_dump
is judged by the rule a dump applies, the WAL archive's own status by the health check, the disk
by the health check's free-space setting.

States: PASS, WARN (works, but worth a look), FAIL (a backup, upload or restore would fail or is
not scheduled), SKIP (not configured or not in use, as intended).
"""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from lifeos_backup.core.errors import LifeosError
from lifeos_backup.core.settings import Settings

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
CHECK_TIMEOUT = 3.0  # seconds each check may take; network checks use less inside
BASEBACKUP = "basebackup"


@dataclass(frozen=True)
class Check:
    name: str
    state: str
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


CheckFn = Callable[[Settings], list[Check]]


def _one_line(text: object, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _failed(name: str, exc: BaseException, fix: str = "") -> Check:
    if isinstance(exc, LifeosError):
        detail = exc.what + (f": {exc.detail}" if exc.detail else "")
        return Check(name, FAIL, _one_line(detail), exc.hint or fix)
    return Check(name, FAIL, _one_line(f"{type(exc).__name__}: {exc}"), fix)


# --- Redis, workers, Beat -------------------------------------------------------------------------

REDIS_FIX = "start Redis, or set LIFEOS_REDIS_URL to the one the workers use (`up` embeds one)"


def _redis_client(settings: Settings) -> Any:
    import redis

    from lifeos_backup.monitoring.broker import broker_url

    url = broker_url(settings)
    if url is None:
        return None
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def check_redis(settings: Settings) -> list[Check]:
    """Redis answers, and keeps its queue across a restart (append-only file or snapshots)."""
    from lifeos_backup.monitoring.broker import broker_url, ping, redacted

    url = broker_url(settings)
    if url is None:
        return [
            Check("redis", FAIL, "no Redis configured (LIFEOS_REDIS_URL unset, no `up`)", REDIS_FIX)
        ]
    problem = ping(url, timeout=2.0)
    if problem:
        return [Check("redis", FAIL, f"{redacted(url)}: {problem}", REDIS_FIX)]
    checks = [Check("redis", PASS, f"{redacted(url)} answers")]
    client = _redis_client(settings)
    try:
        aof = client.config_get("appendonly").get("appendonly", "")
        save = client.config_get("save").get("save", "")
    except Exception as exc:  # managed Redis often forbids CONFIG
        checks.append(
            Check(
                "redis persistence",
                WARN,
                f"cannot read the config: {_one_line(exc)}",
                "make sure the provider keeps an append-only file or snapshots",
            )
        )
        return checks
    if aof == "yes":
        checks.append(Check("redis persistence", PASS, "appendonly yes"))
    elif save.strip():
        checks.append(Check("redis persistence", PASS, f"snapshots (save {save})"))
    else:
        checks.append(
            Check(
                "redis persistence",
                WARN,
                "appendonly no and no save rules: a restart loses queued jobs",
                "set `appendonly yes` in redis.conf (or CONFIG SET appendonly yes)",
            )
        )
    return checks


def check_workers(settings: Settings) -> list[Check]:
    """A worker consumes each queue (Celery's remote control)."""
    from lifeos_backup.app.client import make_app, queue_consumers
    from lifeos_backup.jobs.routes import QUEUES
    from lifeos_backup.monitoring.broker import broker_url

    url = broker_url(settings)
    if url is None:
        return [Check("workers", FAIL, "no Redis configured, so no worker can run", REDIS_FIX)]
    app = make_app(url)
    app.conf.broker_connection_timeout = 2
    app.conf.broker_connection_retry = False
    found = queue_consumers(app, QUEUES, timeout=1.5)
    checks = []
    for queue, workers in found.items():
        if workers:
            checks.append(Check(f"worker {queue}", PASS, ", ".join(workers)))
        else:
            checks.append(
                Check(
                    f"worker {queue}",
                    FAIL,
                    f"no worker consumes the {queue} queue",
                    f"start one: celery -A workers.celery_app worker -Q {queue} "
                    "(or `lifeos-backup up`)",
                )
            )
    return checks


def check_beat(settings: Settings) -> list[Check]:
    """Beat holds RedBeat's lock, refreshed at every tick; its TTL tells the last tick."""
    from lifeos_backup.jobs.routes import REDBEAT_LOCK_KEY

    client = _redis_client(settings)
    if client is None:
        return [Check("beat", FAIL, "no Redis configured, so Beat cannot run", REDIS_FIX)]
    ttl = client.pttl(REDBEAT_LOCK_KEY)
    fix = "start Beat: celery -A workers.celery_app beat -S redbeat.RedBeatScheduler (or `up`)"
    if ttl is None or ttl < 0:
        return [Check("beat", WARN, f"no Beat holds {REDBEAT_LOCK_KEY}: nothing is scheduled", fix)]
    since = max(0.0, 5 * settings.beat_max_interval - ttl / 1000)
    return [Check("beat", PASS, f"RedBeat lock held, last tick {since:.0f} s ago")]


# --- Catalog and repository -----------------------------------------------------------------------


def _present_catalog(settings: Settings) -> Any:
    """The catalog when there is one to read; None for an SQLite file not there (never made)."""
    from lifeos_backup.storage.catalog import generations, open_catalog
    from lifeos_backup.storage.catalog.store import sqlite_file

    path = sqlite_file(settings.effective_catalog_url)
    if path is not None and generations.current(path) is None:
        return None
    return open_catalog(settings.effective_catalog_url)


def check_catalog(settings: Settings) -> list[Check]:
    """The catalog database answers and its schema is the newest migration (read, never changed)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from lifeos_backup.storage.catalog import generations
    from lifeos_backup.storage.catalog.store import HEAD, _file_engine, _with_driver, sqlite_file

    url = settings.effective_catalog_url
    path = sqlite_file(url)
    if path is not None:
        found = generations.current(path)
        if found is None:
            return [
                Check(
                    "catalog",
                    FAIL,
                    f"no catalog at {path}",
                    "run `lifeos-backup up`, or `lifeos-backup catalog rebuild` in an "
                    "existing repository",
                )
            ]
        engine = _file_engine(found)
    else:
        engine = create_engine(_with_driver(url), connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (OperationalError, ProgrammingError) as exc:
        if "alembic_version" not in str(exc):
            raise
        revision = None
    finally:
        engine.dispose()
    if revision != HEAD:
        return [
            Check(
                "catalog",
                FAIL,
                f"schema at {revision or 'nothing (empty)'}, the code needs {HEAD}",
                "restart the workers or run `lifeos-backup list`: opening "
                "the catalog migrates it to head",
            )
        ]
    return [Check("catalog", PASS, f"schema at head ({HEAD})")]


def _last_sizes(settings: Settings) -> dict[str, int]:
    from lifeos_backup.storage.catalog.store import VERIFIED

    catalog = _present_catalog(settings)
    sizes: dict[str, int] = {}
    for row in catalog.list(statuses=(VERIFIED,)) if catalog is not None else []:
        if row.kind not in sizes and row.size:
            sizes[row.kind] = row.size  # newest first
    return sizes


def check_repository(settings: Settings) -> list[Check]:
    """The backup root exists, may be written, and has room for the next backup of each kind."""
    from lifeos_backup.monitoring.health import check_disk, disk_usage

    root = settings.backup_root
    if not root.is_dir():
        return [
            Check(
                "repository",
                FAIL,
                f"{root} does not exist",
                "set LIFEOS_BACKUP_ROOT, or run `lifeos-backup up` to create it",
            )
        ]
    try:
        with tempfile.NamedTemporaryFile(dir=root, prefix=".doctor-"):
            pass
    except OSError as exc:
        return [
            Check(
                "repository",
                FAIL,
                f"cannot write to {root}: {exc.strerror or exc}",
                "give the backup user write access to LIFEOS_BACKUP_ROOT",
            )
        ]
    _path, free, _total = disk_usage(settings)
    sizes = _last_sizes(settings)
    too_big = sorted(kind for kind, size in sizes.items() if size > free)
    gib = free / 2**30
    if too_big:
        return [
            Check(
                "repository",
                FAIL,
                f"{gib:.1f} GiB free; the next {', '.join(too_big)} backup needs about "
                f"{max(sizes[k] for k in too_big) / 2**30:.1f} GiB (the last one's size)",
                "free space or tighten retention (LIFEOS_RETENTION_*)",
            )
        ]
    low = check_disk(settings)
    if low is not None:
        return [Check("repository", WARN, low.detail, low.hint)]
    need = sum(sizes.values())
    return [
        Check(
            "repository",
            PASS,
            f"writable, {gib:.1f} GiB free (next backups ~{need / 2**20:.0f} MiB)",
        )
    ]


# --- PostgreSQL -----------------------------------------------------------------------------------

DB_FIX = "check LIFEOS_DATABASE_URL and that the server runs and accepts this user"


def _connect(settings: Settings) -> Any:
    import psycopg

    from lifeos_backup.kinds.postgres.conninfo import PgTarget

    target = PgTarget.from_settings(settings).with_params(connect_timeout="2")
    return psycopg.connect(target.conninfo(), autocommit=True, **target.connect_kwargs())


UNREADABLE = """
SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'S', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
  AND NOT has_table_privilege(c.oid, 'SELECT')
ORDER BY 1
"""


def check_database(settings: Settings) -> list[Check]:
    """The database answers, every table may be read, and pg_dump is not older than the server."""
    from lifeos_backup.core.errors import PermanentError
    from lifeos_backup.kinds.postgres.tools import require_dump_not_older, tool

    if settings.database_url is None:
        return [Check("database", SKIP, "not configured (LIFEOS_DATABASE_URL unset)")]
    try:
        with _connect(settings) as conn:
            version, number = conn.execute(
                "SELECT current_setting('server_version'), "
                "current_setting('server_version_num')::int"
            ).fetchone()
            unreadable = [r[0] for r in conn.execute(UNREADABLE).fetchall()]
    except Exception as exc:
        return [Check("database", FAIL, _one_line(exc), DB_FIX)]
    checks = [Check("database", PASS, f"PostgreSQL {version} answers")]
    if unreadable:
        checks.append(
            Check(
                "database privileges",
                FAIL,
                f"cannot read {len(unreadable)} tables: {', '.join(unreadable[:5])}",
                "GRANT SELECT ON ALL TABLES (and sequences) to the backup user, or "
                "give it the pg_read_all_data role",
            )
        )
    else:
        checks.append(Check("database privileges", PASS, "every table may be read"))
    try:
        pg_dump = tool(settings, "pg_dump")
        require_dump_not_older(pg_dump, version, number)
    except PermanentError as exc:
        checks.append(_failed("pg_dump", exc))
    else:
        checks.append(Check("pg_dump", PASS, f"{pg_dump.path} {pg_dump.version}"))
    return checks


def _base_backups_in_use(settings: Settings) -> bool:
    from lifeos_backup.storage.catalog.store import DELETED, DELETING

    with contextlib.suppress(Exception):
        catalog = _present_catalog(settings)
        rows = catalog.list(kind=BASEBACKUP) if catalog is not None else []
        return any(r.status not in (DELETED, DELETING) for r in rows)
    return False


def check_wal_archiving(settings: Settings) -> list[Check]:
    """archive_mode and archive_command set, the last archived segment recent, no failures
    (pg_stat_archiver), and the WAL archive's own status as the health check reads it."""
    from lifeos_backup.monitoring.health import check_wal

    name = "wal archiving"
    in_use = _base_backups_in_use(settings)
    if settings.database_url is None:
        state = FAIL if in_use else SKIP
        return [Check(name, state, "no database configured", DB_FIX if in_use else "")]
    try:
        with _connect(settings) as conn:
            mode = conn.execute("SELECT current_setting('archive_mode')").fetchone()[0]
            command = conn.execute("SELECT current_setting('archive_command')").fetchone()[0]
            last, failed, failed_at = conn.execute(
                "SELECT last_archived_time, failed_count, last_failed_time FROM pg_stat_archiver"
            ).fetchone()
    except Exception as exc:
        if not in_use:  # the database line says it; archiving matters only with base backups
            return [Check(name, SKIP, "no base backups; the database does not answer")]
        return [Check(name, FAIL, _one_line(exc), DB_FIX)]
    fix = "set archive_mode = on and archive_command = 'lifeos-wal push %p' (docs/pitr.md)"
    if mode == "off" or not command.strip():
        if not in_use:
            return [Check(name, SKIP, "not in use (archiving off, no base backups)")]
        return [
            Check(
                name,
                FAIL,
                f"archive_mode {mode}, archive_command "
                f"{command.strip() or 'empty'}, but base backups exist",
                fix,
            )
        ]
    now = datetime.now(UTC)
    if failed_at is not None and (last is None or failed_at > last):
        return [
            Check(
                name,
                FAIL,
                f"the last push failed at {failed_at:%Y-%m-%d %H:%M:%S} ({failed} failures in all)",
                "read the PostgreSQL log for the archive_command's error; docs/pitr.md",
            )
        ]
    for condition in check_wal(settings, now):
        state = FAIL if condition.severity == "critical" else WARN
        return [Check(name, state, condition.detail, condition.hint)]
    if last is None:
        return [
            Check(
                name,
                WARN,
                "on, but nothing archived yet",
                "SELECT pg_switch_wal() archives the current segment",
            )
        ]
    age = (now - last).total_seconds()
    return [Check(name, PASS, f"archive_mode {mode}, last segment {age:.0f} s ago")]


# --- Off-site, encryption, ports ------------------------------------------------------------------


def check_offsite(settings: Settings) -> list[Check]:
    """Credentials work and the bucket exists (HEAD bucket)."""
    if not settings.offsite_enabled:
        return [Check("off-site", SKIP, "not configured (LIFEOS_S3_BUCKET unset)")]
    from lifeos_backup.storage.offsite.s3 import connect

    remote = connect(settings)
    try:
        with remote.errors(f"HEAD bucket {settings.s3_bucket}"):
            remote.check()
    except LifeosError as exc:
        return [_failed("off-site", exc, "check LIFEOS_S3_BUCKET, the endpoint and credentials")]
    return [Check("off-site", PASS, f"{remote.where} reachable")]


def check_encryption(settings: Settings) -> list[Check]:
    """Recipients parse; the identity file, when set, is readable and matches a recipient."""
    from lifeos_backup.core.agekeys import load_identities, parse_recipients

    if not settings.encryption_recipients:
        return [Check("encryption", SKIP, "not configured (backups are not encrypted)")]
    try:
        recipients = parse_recipients(settings.encryption_recipients)
    except LifeosError as exc:
        return [_failed("encryption", exc)]
    checks = [Check("encryption", PASS, f"{len(recipients)} recipient(s)")]
    path = settings.encryption_identity_file
    if path is None:
        return checks
    try:
        identities = load_identities(path)
    except LifeosError as exc:
        return [*checks, _failed("encryption identity", exc)]
    ours = {r.text for r in recipients}
    if not any(i.recipient.text in ours for i in identities):
        return [
            *checks,
            Check(
                "encryption identity",
                FAIL,
                f"{path} matches none of LIFEOS_ENCRYPTION_RECIPIENTS",
                "point LIFEOS_ENCRYPTION_IDENTITY_FILE at the key of a recipient",
            ),
        ]
    return [*checks, Check("encryption identity", PASS, f"{path} matches a recipient")]


def _loopback(address: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(address).is_loopback
    return address == "localhost"


def _listening(address: str, port: int) -> bool:
    wildcard = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}  # noqa: S104 (probed)
    host = wildcard.get(address, address)
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
        return True
    return False


def check_ports(settings: Settings) -> list[Check]:
    """Flower and the metrics endpoint listen where configured, on localhost unless protected."""
    checks = []
    for name, address, port, auth in (
        ("flower", settings.flower_address, settings.flower_port, settings.flower_basic_auth),
        ("metrics", settings.metrics_address, settings.metrics_port, None),
    ):
        where = f"{address}:{port}"
        if not port:
            checks.append(Check(name, SKIP, "port 0: off"))
        elif not _loopback(address) and auth is None:
            fix = (
                "set LIFEOS_FLOWER_BASIC_AUTH, or LIFEOS_FLOWER_ADDRESS=127.0.0.1"
                if name == "flower"
                else "set LIFEOS_METRICS_ADDRESS=127.0.0.1, or put it behind a proxy with auth"
            )
            state = FAIL if name == "flower" else WARN
            checks.append(
                Check(name, state, f"{where} is reachable beyond localhost without a password", fix)
            )
        elif _listening(address, port):
            checks.append(Check(name, PASS, f"listening on {where}"))
        else:
            checks.append(
                Check(
                    name,
                    WARN,
                    f"nothing listens on {where}",
                    "start it with `lifeos-backup up` (or `lifeos-backup metrics`)",
                )
            )
    return checks


CHECKS: tuple[tuple[str, CheckFn], ...] = (
    ("redis", check_redis),
    ("workers", check_workers),
    ("beat", check_beat),
    ("catalog", check_catalog),
    ("repository", check_repository),
    ("database", check_database),
    ("wal archiving", check_wal_archiving),
    ("off-site", check_offsite),
    ("encryption", check_encryption),
    ("ports", check_ports),
)


# What the checks import (inside them, so that `doctor --help` stays quick).
PRELOAD = (
    "lifeos_backup.app.client",
    "lifeos_backup.monitoring.broker",
    "lifeos_backup.monitoring.health",
    "lifeos_backup.jobs.routes",
    "lifeos_backup.storage.catalog.store",
    "lifeos_backup.kinds.postgres.tools",
    "lifeos_backup.kinds.postgres.conninfo",
    "lifeos_backup.storage.offsite.s3",
    "lifeos_backup.core.agekeys",
)


def run_checks(
    settings: Settings,
    checks: tuple[tuple[str, CheckFn], ...] = CHECKS,
    timeout: float = CHECK_TIMEOUT,
) -> list[Check]:
    """Every check side by side, each in a daemon thread given `timeout` seconds (a hung one
    becomes a FAIL line and is left behind); the results in the order of `checks`.

    The libraries the checks use are imported first, before the clock starts: thirteen threads
    importing Celery, SQLAlchemy, psycopg and boto3 at once queue on the import lock, and on a
    busy machine that alone took more than a check's seconds, so a worker that answered in time
    was reported as hung."""
    for module in PRELOAD:
        with contextlib.suppress(Exception):  # the check itself reports what is missing
            importlib.import_module(module)
    results: list[list[Check] | None] = [None] * len(checks)

    def run(index: int, name: str, fn: CheckFn) -> None:
        try:
            results[index] = fn(settings)
        except Exception as exc:
            results[index] = [_failed(name, exc)]

    threads = []
    for index, (name, fn) in enumerate(checks):
        thread = threading.Thread(
            target=run, args=(index, name, fn), daemon=True, name=f"doctor {name}"
        )
        thread.start()
        threads.append(thread)
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    found: list[Check] = []
    for (name, _fn), result in zip(checks, results, strict=True):
        if result is None:
            found.append(
                Check(
                    name,
                    FAIL,
                    f"no answer within {timeout:.0f} s",
                    "the service hangs: check it (network, firewall, load)",
                )
            )
        else:
            found.extend(result)
    return found


def ok(checks: list[Check]) -> bool:
    return all(c.state != FAIL for c in checks)
