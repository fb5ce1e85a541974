"""Pure parts of monitoring: scratch names, leftovers, thresholds, URLs, severities, schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from celery.schedules import crontab
from pydantic import SecretStr

from beat_schedule import build_schedule
from lifeos_backup.core.errors import ConfigError
from lifeos_backup.core.settings import Settings
from lifeos_backup.kinds.postgres.conninfo import PgTarget
from lifeos_backup.monitoring.alerts import url_id
from lifeos_backup.monitoring.drill import leftover_scratch, scratch_name, scratch_url
from lifeos_backup.monitoring.health import (
    CRITICAL,
    DEGRADED,
    HEALTHY,
    Condition,
    max_age,
    overall,
    parse_free_space,
    parse_hours_map,
)

NOW = datetime(2026, 11, 29, 4, 0, 0, tzinfo=UTC)


def test_scratch_name_fits_postgres_identifiers_and_is_recognised_as_leftover() -> None:
    assert scratch_name("life_os", NOW) == "life_os_drill_20261129_040000"
    long = scratch_name("ü" * 60, NOW)
    assert len(long.encode()) <= 63 and long.endswith("_drill_20261129_040000")
    old = scratch_name("life_os", NOW - timedelta(hours=2))
    young = scratch_name("life_os", NOW - timedelta(minutes=30))
    names = [old, young, "life_os", "my_drill_notes", "x_drill_20261301_000000"]
    assert leftover_scratch(names, NOW) == [old]


def test_scratch_url_carries_password_and_socket_hosts() -> None:
    target = PgTarget.parse("postgresql://app:p%40ss:w@db.example:5433/life?sslmode=require")
    url = scratch_url(target.with_database("life_drill_x"))
    assert url == "postgresql://app:p%40ss%3Aw@db.example:5433/life_drill_x?sslmode=require"
    socket = PgTarget.parse("host=/run/postgresql dbname=life user=me")
    assert scratch_url(socket) == "postgresql://me@/life?host=%2Frun%2Fpostgresql"


def test_free_space_and_age_thresholds_parse_or_fail_clearly() -> None:
    assert parse_free_space("10%") == (0.10, None)
    assert parse_free_space("20GiB") == (None, 20 * 2**30)
    assert parse_free_space("500 MB") == (None, 500_000_000)
    assert parse_free_space("1234") == (None, 1234)
    with pytest.raises(ConfigError, match="LIFEOS_HEALTH_MIN_FREE_DISK"):
        parse_free_space("lots")
    assert parse_hours_map("basebackup=193, postgres=12") == {"basebackup": 193, "postgres": 12}
    with pytest.raises(ConfigError, match="kind=hours"):
        parse_hours_map("basebackup:193")
    settings = Settings(health_max_age_hours=25, health_max_age_per_kind="basebackup=193")
    assert max_age(settings, "json") == timedelta(hours=25)
    assert max_age(settings, "basebackup") == timedelta(hours=193)


def test_overall_severity_is_the_worst_condition() -> None:
    degraded = Condition("size_anomaly", DEGRADED, "odd", kind="json")
    critical = Condition("backup_overdue", CRITICAL, "late", kind="json")
    assert overall([]) == HEALTHY
    assert overall([degraded]) == DEGRADED
    assert overall([degraded, critical]) == CRITICAL
    assert critical.key == "backup_overdue:json"


def test_alert_urls_are_named_without_their_secret() -> None:
    name = url_id("slack://T000/B000/s3cr3t-token")
    assert name.startswith("slack:") and "s3cr3t" not in name
    assert Settings(alert_urls=SecretStr("json://a/")).alert_urls is not None


def test_drill_and_health_are_scheduled_by_default() -> None:
    schedule = build_schedule(Settings())
    drill, health = schedule["restore-drill"], schedule["health-check"]
    assert drill["task"] == "lifeos.drill.run" and health["task"] == "lifeos.health.check"
    assert drill["schedule"] == crontab(minute="0", hour="4", day_of_week="0")
    assert health["schedule"] == crontab(minute="0")
