"""`lifeos-backup status`: the state of every kind and the recovery figures, for people and cron.

Computed from the catalog, the disk and the WAL archive at call time, so any host that sees the
catalog can answer (no worker needed), plus one PING of Redis with a short timeout: when Redis
does not answer, `broker_unreachable` (critical) says since when. The start of the outage is
noted in the state dir if nobody did yet (monitoring.broker), so a deployment without
`lifeos-backup up` (Compose) also gets a start time; the note goes once Redis answers. The exit
code is the worst condition's severity: 0 healthy, 1 degraded, 2 critical (health.RANK).

Figures per kind:
- RPO (recovery point): how much data a disaster now would lose: the age of the newest verified
  backup, or for `postgres` and `basebackup` with point-in-time recovery in use, the age of the
  newest archived WAL segment.
- RTO (recovery time): the restore time measured by the newest passed restore drill.
- Measured RPO (`drill_rpo_s`, `basebackup` only): how far behind the primary the newest passed
  point-in-time recovery drill's copy was when its recovery ended.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from lifeos_backup.core.settings import Settings
from lifeos_backup.monitoring import broker, records
from lifeos_backup.monitoring.health import (
    BROKER_UNREACHABLE,
    RANK,
    Condition,
    disk_usage,
    evaluate_health,
    newest_good,
    overall,
    wal_status,
    watched_kinds,
)
from lifeos_backup.storage.catalog import Catalog
from lifeos_backup.storage.catalog.models import Drill
from lifeos_backup.storage.catalog.store import VERIFIED, utcnow

PITR_KINDS = ("postgres", "basebackup")  # with WAL archived, their recovery point is the WAL's


def _drill_info(row: Drill | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "id": row.id,
        "status": row.status,
        "backup_id": row.backup_id,
        "started_at": row.started_at.isoformat(),
        "duration_s": row.duration_s,
        "restore_s": row.restore_s,
        "error": row.error,
        "report": row.report_path,
    }


def _last_passed(catalog: Catalog, kind: str) -> Drill | None:
    return next((d for d in records.history(catalog, kind, 50) if d.status == records.PASSED), None)


def kinds_shown(settings: Settings, catalog: Catalog, drills: dict[str, Drill]) -> list[str]:
    """Watched kinds, then any other kind with a verified backup or a drill."""
    kinds = watched_kinds(settings, catalog)
    others = {r.kind for r in catalog.list(statuses=(VERIFIED,))} | set(drills)
    return kinds + sorted(others - set(kinds))


def kind_status(
    settings: Settings,
    catalog: Catalog,
    kind: str,
    now: datetime,
    last_drill: Drill | None,
    wal: dict[str, Any] | None,
) -> dict[str, Any]:
    good = newest_good(catalog, kind)
    info: dict[str, Any] = {"kind": kind, "newest_good": None, "rpo_s": None, "rpo_source": None}
    if good is not None:
        age = (now - good.created_at).total_seconds()
        info["newest_good"] = {
            "id": good.id,
            "created_at": good.created_at.isoformat(),
            "verified_at": good.verified_at.isoformat() if good.verified_at else None,
            "age_s": round(age, 1),
            "size": good.size,
            "duration_s": good.duration_s,
            "offsite": getattr(good, "offsite_status", None) if settings.offsite_enabled else None,
        }
        info["rpo_s"], info["rpo_source"] = round(age, 1), "backup"
    if kind in PITR_KINDS and wal is not None and wal.get("age_seconds") is not None:
        info["rpo_s"], info["rpo_source"] = wal["age_seconds"], "wal"
    info["last_drill"] = _drill_info(last_drill)
    passed = last_drill if last_drill and last_drill.status == records.PASSED else None
    passed = passed or _last_passed(catalog, kind)
    info["rto_s"] = passed.restore_s if passed is not None else None
    # The PITR drill measures the recovery point too: how far its copy was behind the primary.
    measured = records.details_of(passed).get("rpo_s") if passed is not None else None
    info["drill_rpo_s"] = measured if isinstance(measured, int | float) else None
    return info


def broker_status(settings: Settings, conditions: list[Condition], now: datetime) -> dict[str, Any]:
    """The broker's state as `check_broker` found it (no second PING), with the note kept in step.

    `reachable` is None when no Redis is configured (no LIFEOS_REDIS_URL, no `up` running).
    """
    url = broker.broker_url(settings)
    if url is None:
        return {"url": None, "reachable": None, "since": None, "reason": None}
    down = next((c for c in conditions if c.name == BROKER_UNREACHABLE), None)
    broker.note(settings.state_dir, down is not None, now)
    since = broker.read_since(settings.state_dir) or now if down is not None else None
    return {
        "url": broker.redacted(url),
        "reachable": down is None,
        "since": since.isoformat() if since is not None else None,
        "reason": down.detail.partition(": ")[2] if down is not None else None,
    }


def build_status(
    settings: Settings, catalog: Catalog, now: datetime | None = None
) -> dict[str, Any]:
    """Everything `status --json` prints; `exit_code` is 0/1/2."""
    now = now or utcnow()
    conditions = evaluate_health(settings, catalog, now)
    broker_state = broker_status(settings, conditions, now)
    drills = records.latest(catalog)
    wal = wal_status(settings, now)
    path, free, total = disk_usage(settings)
    state = overall(conditions)
    return {
        "status": state,
        "exit_code": RANK[state],
        "checked_at": now.isoformat(),
        "kinds": [
            kind_status(settings, catalog, kind, now, drills.get(kind), wal)
            for kind in kinds_shown(settings, catalog, drills)
        ],
        "disk": {"path": str(path), "free_bytes": free, "total_bytes": total},
        "wal": wal,
        "offsite_enabled": settings.offsite_enabled,
        "offsite_targets": offsite_targets(settings, catalog),
        "broker": broker_state,
        "conditions": [c.as_dict() for c in conditions],
    }


def offsite_targets(settings: Settings, catalog: Catalog) -> list[dict[str, object]]:
    """Each off-site target's lag (storage.offsite.state.behind); [] when off-site is off."""
    if not settings.offsite_enabled:
        return []
    from lifeos_backup.storage.offsite.state import behind
    from lifeos_backup.storage.offsite.targets import configured

    names = [t.name for t in configured(settings)]
    return behind(catalog, settings.backup_root, names)
