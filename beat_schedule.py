"""Celery Beat's schedule, built from settings (crontab strings in a configurable timezone).

Beat enqueues `lifeos.backup.start`, which launches the kind's whole chain, so a scheduled backup
runs exactly the same steps as one requested from the CLI or the app.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from celery.schedules import crontab
from celery.schedules import schedule as interval

from lifeos_backup.core.errors import ConfigError
from lifeos_backup.core.settings import Settings
from lifeos_backup.kinds.postgres.conninfo import postgres_configured

EVERY = re.compile(r"(?:@every\s+|every:)(\d+)\s*(s|m|h)?", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600}
INITIATOR = {"lifeos_initiator": "beat"}  # message header: the audit trail's initiator


def parse_every(text: str, setting: str) -> interval | None:
    """`@every 2s` / `every:30` (seconds; suffix s, m or h) -> a fixed interval; else None.

    Crontab strings cannot say "every few seconds"; tests of Beat itself need that, and an
    operator may want e.g. `@every 90s`.
    """
    match = EVERY.fullmatch(text.strip())
    if match is None:
        return None
    seconds = int(match.group(1)) * _SECONDS[(match.group(2) or "s").lower()]
    if seconds < 1:
        raise ConfigError(f"{setting} must repeat at least every second", f"got {text!r}")
    return interval(timedelta(seconds=seconds))


def parse_crontab(text: str, setting: str) -> crontab | interval:
    """Five crontab fields -> crontab (or `@every Ns` -> interval), or ConfigError naming the
    setting."""
    interval = parse_every(text, setting)
    if interval is not None:
        return interval
    fields = text.split()
    if len(fields) != 5:
        raise ConfigError(
            f"{setting} is not a crontab string",
            f"{text!r} has {len(fields)} fields",
            "use five fields: minute hour day-of-month month day-of-week, e.g. '0 2 * * *'",
        )
    minute, hour, day_of_month, month, day_of_week = fields
    try:
        return crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month,
            day_of_week=day_of_week,
        )
    except ValueError as exc:
        raise ConfigError(f"{setting} is not a valid crontab", str(exc)) from exc


def build_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Every periodic job; names are what Flower and the logs show.

    The PostgreSQL backup is scheduled only when a database is configured (LIFEOS_DATABASE_URL or
    libpq's PGHOST / PGDATABASE / PGSERVICE), so an install without one does not fail nightly.
    """
    schedule: dict[str, dict[str, Any]] = {
        "json-backup": {
            "task": "lifeos.backup.start",
            "schedule": parse_crontab(settings.schedule_json_backup, "LIFEOS_SCHEDULE_JSON_BACKUP"),
            "args": ("json",),
        },
        "rotate-all": {
            "task": "lifeos.backup.rotate",
            "schedule": parse_crontab(settings.schedule_rotate, "LIFEOS_SCHEDULE_ROTATE"),
        },
        # Monitoring (docs/monitoring.md): weekly restore drills, hourly health check.
        "restore-drill": {
            "task": "lifeos.drill.run",
            "schedule": parse_crontab(settings.schedule_drill, "LIFEOS_SCHEDULE_DRILL"),
        },
        "health-check": {
            "task": "lifeos.health.check",
            "schedule": parse_crontab(settings.schedule_health, "LIFEOS_SCHEDULE_HEALTH"),
        },
    }
    if postgres_configured(settings):
        schedule["postgres-backup"] = {
            "task": "lifeos.backup.start",
            "schedule": parse_crontab(
                settings.schedule_postgres_backup, "LIFEOS_SCHEDULE_POSTGRES_BACKUP"
            ),
            "args": ("postgres",),
        }
        # Point-in-time recovery (docs/pitr.md): weekly pg_basebackup; the server archives WAL.
        schedule["base-backup"] = {
            "task": "lifeos.backup.start",
            "schedule": parse_crontab(
                settings.schedule_base_backup, "LIFEOS_SCHEDULE_BASE_BACKUP"
            ),
            "args": ("basebackup",),
        }
        # ... and proven weekly: base backup + WAL recovered in a scratch cluster (RPO, RTO).
        schedule["pitr-drill"] = {
            "task": "lifeos.drill.run",
            "schedule": parse_crontab(settings.schedule_pitr_drill, "LIFEOS_SCHEDULE_PITR_DRILL"),
            "args": ("basebackup",),
        }
    if settings.offsite_enabled:  # off-site is on exactly when a bucket is set
        schedule["offsite-sync"] = {
            "task": "lifeos.offsite.sync",
            "schedule": parse_crontab(
                settings.schedule_offsite_sync, "LIFEOS_SCHEDULE_OFFSITE_SYNC"
            ),
        }
        if postgres_configured(settings):  # archived WAL follows off-site within minutes
            schedule["wal-offsite"] = {
                "task": "lifeos.pitr.wal_offsite",
                "schedule": parse_crontab(
                    settings.schedule_wal_offsite, "LIFEOS_SCHEDULE_WAL_OFFSITE"
                ),
            }
    schedule["audit-rotate"] = {  # audit records older than LIFEOS_AUDIT_RETENTION_DAYS go
        "task": "lifeos.audit.rotate",
        "schedule": parse_crontab(settings.schedule_audit_rotate, "LIFEOS_SCHEDULE_AUDIT_ROTATE"),
    }
    # Who asked, for the audit trail (lifeos_backup.jobs.audit_tasks).
    for entry in schedule.values():
        entry.setdefault("options", {}).setdefault("headers", {}).update(INITIATOR)
    return schedule
