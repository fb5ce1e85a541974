"""Celery Beat's schedule, built from settings (crontab strings in a configurable timezone).

Beat enqueues `lifeos.backup.start`, which launches the kind's whole chain, so a scheduled backup
runs exactly the same steps as one requested from the CLI or the app.
"""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from lifeos_backup.errors import ConfigError
from lifeos_backup.settings import Settings


def parse_crontab(text: str, setting: str) -> crontab:
    """Five crontab fields -> crontab, or ConfigError naming the setting."""
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
    """Every periodic job; names are what Flower and the logs show."""
    return {
        "json-backup": {
            "task": "lifeos.backup.start",
            "schedule": parse_crontab(settings.schedule_json_backup, "LIFEOS_SCHEDULE_JSON_BACKUP"),
            "args": ("json",),
        },
        "rotate-all": {
            "task": "lifeos.backup.rotate",
            "schedule": parse_crontab(settings.schedule_rotate, "LIFEOS_SCHEDULE_ROTATE"),
        },
    }
