"""Health conditions: what is wrong with the backups right now, from the catalog and the disk.

`evaluate_health` is a plain function of (settings, catalog, now) so that the hourly task, the
`status` command and the metrics endpoint all judge alike, and tests can call it with any `now`.
It never changes anything; self-healing and alerts (`checkup`) act on its result.

Every condition has a fixed severity (docs/monitoring.md has the table):
critical means the recovery promise is broken now (no recent good backup, a backup that did not
restore, WAL archiving failing, Redis unreachable so that nothing is scheduled or run); degraded
means it is at risk (odd size, disk filling up, off-site copies behind, WAL archive quiet).
"""

from __future__ import annotations

import logging
import re
import shutil
import statistics
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lifeos_backup.core.errors import ConfigError
from lifeos_backup.core.settings import Settings
from lifeos_backup.kinds.basebackup.health import wal_archive_status
from lifeos_backup.monitoring import records
from lifeos_backup.storage.catalog import Backup, Catalog
from lifeos_backup.storage.catalog.store import DELETED, VERIFIED, utcnow

log = logging.getLogger(__name__)

HEALTHY, DEGRADED, CRITICAL = "healthy", "degraded", "critical"
RANK = {HEALTHY: 0, DEGRADED: 1, CRITICAL: 2}  # also the exit code of `lifeos-backup status`

BACKUP_OVERDUE = "backup_overdue"
SIZE_ANOMALY = "size_anomaly"
LOW_DISK = "low_disk"
DRILL_FAILED = "drill_failed"
OFFSITE_LAG = "offsite_lag"
OFFSITE_TARGET_BEHIND = "offsite_target_behind"
WAL_STALE = "wal_archive_stale"
WAL_FAILING = "wal_archive_failing"
BROKER_UNREACHABLE = "broker_unreachable"
UNPROVEN = "unproven_backups"
WAL_STREAM_DOWN = "wal_stream_down"
WAL_STREAM_CONFLICT = "wal_stream_conflict"
WAL_SLOT_LAG = "wal_slot_lag"
WAL_SLOT_LOST = "wal_slot_lost"
SEVERITY = {
    BROKER_UNREACHABLE: CRITICAL,
    UNPROVEN: DEGRADED,
    BACKUP_OVERDUE: CRITICAL,
    DRILL_FAILED: CRITICAL,
    WAL_FAILING: CRITICAL,
    SIZE_ANOMALY: DEGRADED,
    LOW_DISK: DEGRADED,
    OFFSITE_LAG: DEGRADED,
    OFFSITE_TARGET_BEHIND: DEGRADED,
    WAL_STALE: DEGRADED,
    WAL_STREAM_DOWN: CRITICAL,
    WAL_STREAM_CONFLICT: CRITICAL,
    WAL_SLOT_LAG: DEGRADED,
    WAL_SLOT_LOST: CRITICAL,
}
MIN_SIZE_HISTORY = 3  # fewer earlier good backups than this: too little to call a size odd
# lifeos_backup.storage.offsite.state.UPLOADED (not imported: no boto3 needed)
UPLOADED = "uploaded"
_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4,
}  # fmt: skip


@dataclass(frozen=True)
class Condition:
    """One thing wrong; `key` identifies it across checks (alert state, self-healing)."""

    name: str
    severity: str
    summary: str
    detail: str = ""
    hint: str = ""
    kind: str | None = None

    @property
    def key(self) -> str:
        return f"{self.name}:{self.kind}" if self.kind else self.name

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, **asdict(self)}


def _condition(
    name: str, summary: str, detail: str, hint: str, kind: str | None = None
) -> Condition:
    return Condition(name, SEVERITY[name], summary, detail, hint, kind)


def overall(conditions: list[Condition]) -> str:
    """The worst severity present: healthy, degraded or critical."""
    return max((c.severity for c in conditions), key=RANK.__getitem__, default=HEALTHY)


# ----------------------------------------------------------------------------- settings


def parse_hours_map(text: str, setting: str = "LIFEOS_HEALTH_MAX_AGE_PER_KIND") -> dict[str, float]:
    """`kind=hours,kind=hours` -> {kind: hours}."""
    result: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        kind, _, value = item.partition("=")
        try:
            result[kind.strip()] = float(value)
        except ValueError:
            raise ConfigError(
                f"{setting} has an invalid entry",
                repr(item),
                "write kind=hours, e.g. basebackup=193",
            ) from None
    return result


def max_age(settings: Settings, kind: str) -> timedelta:
    per_kind = parse_hours_map(settings.health_max_age_per_kind)
    return timedelta(hours=per_kind.get(kind, settings.health_max_age_hours))


def parse_bytes(text: str, setting: str) -> int:
    """`1GiB` / `500MB` / `1000000` -> bytes; a ConfigError naming `setting` otherwise."""
    fraction, size = parse_free_space(text, setting, percent=False)
    assert fraction is None and size is not None
    return size


def parse_free_space(
    text: str, setting: str = "LIFEOS_HEALTH_MIN_FREE_DISK", percent: bool = True
) -> tuple[float | None, int | None]:
    """`10%` -> (0.10, None); `20GiB` / `500MB` / `1000000` -> (None, bytes)."""
    value = text.strip().lower().replace(" ", "")
    if value.endswith("%") and percent:
        try:
            return float(value[:-1]) / 100, None
        except ValueError:
            pass
    else:
        match = re.fullmatch(r"([0-9.]+)([a-z]*)", value)
        if match and match[2] in _UNITS:
            try:
                return None, int(float(match[1]) * _UNITS[match[2]])
            except ValueError:
                pass
    raise ConfigError(
        f"{setting} is not {'a percentage or ' if percent else ''}a size",
        repr(text),
        f"write e.g. {'10% or ' if percent else ''}20GiB",
    )


def watched_kinds(settings: Settings, catalog: Catalog) -> list[str]:
    """Kinds that must have a recent good backup (LIFEOS_HEALTH_KINDS, else derived)."""
    from lifeos_backup.kinds.postgres.conninfo import postgres_configured
    from lifeos_backup.kinds.registry import KINDS

    if settings.health_kinds and settings.health_kinds.strip():
        chosen = [k.strip() for k in settings.health_kinds.split(",") if k.strip()]
        unknown = sorted(set(chosen) - set(KINDS))
        if unknown:
            raise ConfigError(
                "LIFEOS_HEALTH_KINDS names unknown kinds",
                ", ".join(unknown),
                f"use some of: {', '.join(sorted(KINDS))}",
            )
        return chosen

    kinds = ["json"]
    if postgres_configured(settings):
        kinds.append("postgres")
    for kind in KINDS:  # e.g. base backups: watched once the system has made one
        if kind not in kinds and catalog.list(kind=kind, statuses=(VERIFIED,)):
            kinds.append(kind)
    return kinds


# ----------------------------------------------------------------------------- checks


def newest_good(catalog: Catalog, kind: str) -> Backup | None:
    rows = catalog.list(kind=kind, statuses=(VERIFIED,))
    return rows[0] if rows else None


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f} h"


def check_overdue(
    settings: Settings, catalog: Catalog, kind: str, now: datetime
) -> Condition | None:
    """The newest verified backup of `kind` is older than its limit, or there is none."""
    limit = max_age(settings, kind)
    newest = newest_good(catalog, kind)
    hint = (
        f"see `lifeos-backup list --kind {kind}` and the worker/Beat logs; the health check "
        "requests one catch-up backup per episode"
    )
    if newest is None:
        return _condition(
            BACKUP_OVERDUE, f"no verified {kind} backup", "none in the catalog", hint, kind
        )
    age = now - newest.created_at
    if age <= limit:
        return None
    return _condition(
        BACKUP_OVERDUE,
        f"{kind} backup overdue",
        f"newest verified backup {newest.id} is {_hours(age)} old (limit {_hours(limit)})",
        hint,
        kind,
    )


def good_history(catalog: Catalog, kind: str) -> list[Backup]:
    """Backups that were verified (including ones rotation deleted since), newest first."""
    rows = catalog.list(kind=kind, statuses=(VERIFIED, DELETED))
    return [r for r in rows if r.verified_at is not None and r.size is not None]


def check_size(settings: Settings, catalog: Catalog, kind: str) -> Condition | None:
    """The newest good backup's size is off the median of the previous N good ones by > tol."""
    history = good_history(catalog, kind)
    newest = next((r for r in history if r.status == VERIFIED), None)
    if newest is None:
        return None
    earlier = [r for r in history if r.created_at < newest.created_at]
    earlier = earlier[: settings.health_size_history]
    if len(earlier) < MIN_SIZE_HISTORY:
        return None
    median = statistics.median(r.size or 0 for r in earlier)
    if median <= 0:
        return None
    change = (newest.size or 0) / median - 1
    if abs(change) <= settings.health_size_tolerance:
        return None
    return _condition(
        SIZE_ANOMALY,
        f"{kind} backup size changed by {change:+.0%}",
        f"{newest.id} is {newest.size} bytes; median of the previous {len(earlier)} good "
        f"backups {median:.0f} bytes (tolerance ±{settings.health_size_tolerance:.0%})",
        "data deleted or a source folder missing (smaller), or runaway data (larger)? "
        f"compare with `lifeos-backup show {newest.id}`",
        kind,
    )


def disk_usage(settings: Settings) -> tuple[Path, int, int]:
    """(path measured, free bytes, total bytes) of the file system holding the backup root."""
    path = settings.backup_root.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = shutil.disk_usage(path)
    return path, usage.free, usage.total


def check_disk(settings: Settings) -> Condition | None:
    fraction, minimum = parse_free_space(settings.health_min_free_disk)
    path, free, total = disk_usage(settings)
    needed = int(total * fraction) if fraction is not None else int(minimum or 0)
    if free >= needed:
        return None
    return _condition(
        LOW_DISK,
        "backup disk is filling up",
        f"{free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB at {path} "
        f"(alert below {settings.health_min_free_disk})",
        "free space or tighten retention (LIFEOS_RETENTION_*); backups fail when it is full",
    )


def check_drills(catalog: Catalog) -> list[Condition]:
    """The newest finished drill of a kind failed: its backup did not restore as promised."""
    found = []
    for kind, row in sorted(records.latest(catalog).items()):
        if row.status == records.FAILED:
            found.append(
                _condition(
                    DRILL_FAILED,
                    f"{kind} restore drill failed",
                    f"drill {row.id} of {row.backup_id}: {row.error or 'no reason recorded'}",
                    f"read {row.report_path or 'the drill report'}/drill.log under the backup "
                    f"root; run `lifeos-backup drill --kind {kind}` again after fixing",
                    kind,
                )
            )
    return found


def check_offsite(settings: Settings, catalog: Catalog, now: datetime) -> list[Condition]:
    """Verified backups without a good off-site copy for longer than the limit (off-site on)."""
    if not settings.offsite_enabled or not hasattr(Backup, "offsite_status"):
        return []
    limit = timedelta(hours=settings.health_offsite_max_lag_hours)
    lagging: dict[str, list[Backup]] = {}
    for row in catalog.list(statuses=(VERIFIED,)):
        since = row.verified_at or row.created_at
        if getattr(row, "offsite_status", None) != UPLOADED and now - since > limit:
            lagging.setdefault(row.kind, []).append(row)
    found = []
    for kind, rows in sorted(lagging.items()):
        oldest = rows[-1]
        state = getattr(oldest, "offsite_status", None) or "never uploaded"
        reason = getattr(oldest, "offsite_error", None)
        found.append(
            _condition(
                OFFSITE_LAG,
                f"{len(rows)} {kind} backup(s) not off-site",
                f"oldest {oldest.id}: {state}{f' ({reason})' if reason else ''}; "
                f"limit {settings.health_offsite_max_lag_hours:g} h after verification",
                "look at the off-site sync task's failures (Flower) and the S3 settings",
                kind,
            )
        )
    return found


def check_offsite_targets(settings: Settings, catalog: Catalog, now: datetime) -> list[Condition]:
    """With several off-site targets: one condition per target that lacks a good copy of a
    backup verified longer ago than LIFEOS_HEALTH_OFFSITE_MAX_LAG_HOURS ("azure-weu 2 backups
    behind since T"). It clears once the target holds every copy again. With one target,
    `offsite_lag` says the same."""
    if not settings.offsite_enabled:
        return []
    from lifeos_backup.storage.offsite.state import behind, describe_behind
    from lifeos_backup.storage.offsite.targets import configured

    names = [t.name for t in configured(settings)]
    if len(names) < 2:
        return []
    limit = timedelta(hours=settings.health_offsite_max_lag_hours)
    found = []
    for entry in behind(catalog, settings.backup_root, names):
        since = entry["since"]
        if not entry["behind"] or not isinstance(since, str):
            continue
        if now - datetime.fromisoformat(since).astimezone(UTC) <= limit:
            continue
        error = entry["error"]
        found.append(
            _condition(
                OFFSITE_TARGET_BEHIND,
                f"off-site target {entry['name']} is behind",
                describe_behind(entry) + (f"; last error: {error}" if error else ""),
                "the other targets hold the copies; the off-site sync uploads what this one "
                "lacks once it is reachable (see `lifeos-backup status --json`, offsite_targets)",
                str(entry["name"]),
            )
        )
    return found


def wal_status(settings: Settings, now: datetime) -> dict[str, Any] | None:
    """The WAL archive's status when point-in-time recovery is in use (segments archived)."""
    try:
        status = wal_archive_status(settings, now)
    except Exception as exc:  # a health check must report, not crash, on a broken archive
        log.warning("cannot read the WAL archive status: %s", exc)
        return None
    return status if status.get("exists") and status.get("segments") else None


def check_wal(settings: Settings, now: datetime) -> list[Condition]:
    status = wal_status(settings, now)
    if status is None:
        return []
    found = []
    failures = int(status.get("consecutive_failures") or 0)
    if failures:
        found.append(
            _condition(
                WAL_FAILING,
                "WAL archiving is failing",
                f"{failures} failed pushes in a row; last: {status.get('last_failure')}",
                "PostgreSQL keeps the WAL until archiving works again and its disk fills up; "
                "see docs/pitr.md",
                "postgres",
            )
        )
    age = status.get("age_seconds")
    limit = settings.health_wal_max_age_seconds
    if limit and age is not None and age > limit:
        found.append(
            _condition(
                WAL_STALE,
                "WAL archive is not advancing",
                f"newest segment {status.get('newest_segment')} archived {age:.0f} s ago "
                f"(limit {limit} s)",
                "is archive_mode on and archive_timeout set? (an idle database also looks so)",
                "postgres",
            )
        )
    return found


def _down_seconds(stream: dict[str, Any], now: datetime) -> float | None:
    """How long the stream's receiver has been down, from its status file (None: unknown)."""
    receiver = stream.get("receiver") or {}
    if receiver.get("state") == "running" or not receiver.get("since"):
        return None
    try:
        since = datetime.fromisoformat(str(receiver["since"]))
    except ValueError:
        return None
    return max(0.0, (now - since).total_seconds())


def check_stream(settings: Settings, now: datetime) -> list[Condition]:
    """The WAL stream (LIFEOS_WAL_STREAM=1): streaming now, its slot within limits, no segment
    that arrived twice with different content.

    Asks the primary (pg_replication_slots, pg_stat_replication) with the connect timeout. A slot
    whose receiver is gone makes the primary keep WAL until its disk is full; with synchronous
    mode the application's commits wait: both are alerts at once (the stream requests a health
    check when its receiver exits).
    """
    if not settings.wal_stream:
        return []
    from lifeos_backup.kinds.basebackup import wal_archive_dir
    from lifeos_backup.kinds.basebackup.streaming import slot_status
    from lifeos_backup.wal.stream import read_status

    found = []
    stream = read_status(wal_archive_dir(settings))
    conflicts = stream.get("conflicts") or []
    if conflicts:
        last = conflicts[-1]
        found.append(
            _condition(
                WAL_STREAM_CONFLICT,
                f"{len(conflicts)} streamed WAL file(s) not archived (different content)",
                f"{last.get('name')}: {last.get('detail')}; kept as {last.get('kept')}",
                "two clusters may share one archive or slot; compare the kept file with the "
                "archived one (docs/pitr.md, \"The WAL stream\"), then delete the kept file",
                "postgres",
            )
        )
    hint = "see `lifeos-backup wal slot status`, the wal-stream log and docs/runbook.md"
    try:
        slot = slot_status(settings)
    except Exception as exc:  # the database down or refusing: the stream cannot be streaming
        return [
            *found,
            _condition(
                WAL_STREAM_DOWN,
                "WAL stream: cannot ask the primary about its slot",
                str(exc)[:500],
                hint,
                "postgres",
            ),
        ]
    if not slot.streaming:
        down = _down_seconds(stream, now)
        state = "slot missing" if not slot.exists else (slot.state or "no receiver connected")
        found.append(
            _condition(
                WAL_STREAM_DOWN,
                f"WAL stream not streaming ({state})",
                f"slot {slot.slot}"
                + (f", receiver down for {down:.0f} s" if down is not None else "")
                + (f": {(stream.get('receiver') or {}).get('last_exit')}" if down else "")
                + "; with synchronous mode, commits wait",
                hint,
                "postgres",
            )
        )
    if slot.wal_status in ("unreserved", "lost"):
        found.append(
            _condition(
                WAL_SLOT_LOST,
                f"WAL stream slot {slot.slot} is {slot.wal_status}",
                "max_slot_wal_keep_size was exceeded: the primary removed (or will remove) WAL "
                "the stream has not received; the stream has a gap, archive_command covers it",
                "restart the stream; take a base backup once it streams again",
                "postgres",
            )
        )
    limit = parse_bytes(
        settings.health_wal_slot_max_lag_bytes, "LIFEOS_HEALTH_WAL_SLOT_MAX_LAG_BYTES"
    )
    seconds = slot.lag_seconds if slot.streaming else _down_seconds(stream, now)
    max_seconds = settings.health_wal_slot_max_lag_seconds
    too_many = slot.lag_bytes is not None and slot.lag_bytes > limit
    too_late = bool(max_seconds) and seconds is not None and seconds > max_seconds
    if too_many or too_late:
        found.append(
            _condition(
                WAL_SLOT_LAG,
                f"WAL stream slot {slot.slot} is behind",
                f"holds back {slot.lag_bytes} bytes of WAL (limit {limit}), receiver "
                f"{'-' if seconds is None else f'{seconds:.0f} s'} behind (limit {max_seconds} s)",
                "the primary keeps this WAL on its disk; " + hint,
                "postgres",
            )
        )
    return found


UNPROVEN_STATUSES = ("unverified", "incomplete")  # catalog.store.UNVERIFIED, INCOMPLETE


def check_unproven(catalog: Catalog) -> list[Condition]:
    """Backups a catalog rebuild listed without proof (unverified: not re-read; incomplete: an
    archive without its manifest). Rotation never removes them and they never count as good, so
    they stay until someone looks: `verify` turns each into verified or failed."""
    by_kind: dict[str, list[Backup]] = {}
    for row in catalog.list(statuses=UNPROVEN_STATUSES):
        by_kind.setdefault(row.kind, []).append(row)
    found = []
    for kind, rows in sorted(by_kind.items()):
        shown = ", ".join(f"{r.id} ({r.status})" for r in rows[:5])
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        found.append(
            _condition(
                UNPROVEN,
                f"{len(rows)} {kind} backup(s) unverified or incomplete",
                f"{shown}{more}",
                f"check each with `lifeos-backup verify ID` (e.g. `lifeos-backup verify "
                f"{rows[0].id}`): it becomes verified or failed",
                kind,
            )
        )
    return found


def check_broker(settings: Settings, now: datetime) -> Condition | None:
    """Redis does not answer: no backup is enqueued, run or recorded until it does.

    The only check that looks beyond the catalog and the disk, with a short timeout. "Since"
    is the start noted in the state dir by whoever saw the outage first (`up`, `status`);
    without such a note it is now. Reads only: `status` and `up` keep the note.
    """
    from lifeos_backup.monitoring import broker

    url = broker.broker_url(settings)
    if url is None:
        return None
    reason = broker.ping(url)
    if reason is None:
        return None
    since = broker.read_since(settings.state_dir) or now
    return _condition(
        BROKER_UNREACHABLE,
        f"broker unreachable since {since.astimezone(UTC).isoformat(timespec='seconds')}",
        f"Redis at {broker.redacted(url)}: {reason}",
        "start Redis (docker compose up -d redis, or the service holding LIFEOS_REDIS_URL); "
        "workers, Beat and Flower reconnect by themselves; see docs/runbook.md",
    )


def evaluate_health(
    settings: Settings, catalog: Catalog, now: datetime | None = None
) -> list[Condition]:
    """Every condition that holds now; an empty list means healthy."""
    now = (now or utcnow()).astimezone(UTC)
    found: list[Condition] = []
    broker_down = check_broker(settings, now)
    if broker_down is not None:
        found.append(broker_down)
    for kind in watched_kinds(settings, catalog):
        overdue = check_overdue(settings, catalog, kind, now)
        if overdue is not None:
            found.append(overdue)
        odd = check_size(settings, catalog, kind)
        if odd is not None:
            found.append(odd)
    disk = check_disk(settings)
    if disk is not None:
        found.append(disk)
    found += check_drills(catalog)
    found += check_offsite(settings, catalog, now)
    found += check_offsite_targets(settings, catalog, now)
    found += check_wal(settings, now)
    found += check_stream(settings, now)
    found += check_unproven(catalog)
    return found
