"""Pure parts of monitoring: scratch names, leftovers, thresholds, URLs, severities, schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from celery.schedules import crontab
from pydantic import SecretStr

from beat_schedule import build_schedule
from lifeos_backup.core.errors import ConfigError
from lifeos_backup.core.settings import Settings
from lifeos_backup.kinds.basebackup.drill import (
    PrimaryEnd,
    compare_counts,
    recovery_point_objective,
)
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


def test_the_pitr_drill_is_scheduled_weekly_only_with_a_database() -> None:
    assert "pitr-drill" not in build_schedule(Settings())
    schedule = build_schedule(Settings(database_url="postgresql://u:p@db/app"))
    entry = schedule["pitr-drill"]
    assert entry["task"] == "lifeos.drill.run" and entry["args"] == ("basebackup",)
    assert entry["schedule"] == crontab(minute="30", hour="4", day_of_week="0")


def test_pitr_drill_judges_quiet_tables_exactly_and_growing_ones_by_bounds() -> None:
    before = {"s.quiet": 5, "s.grown": 10, "s.churn": 4, "s.gone": 3, "s.short": 2}
    after = {"s.quiet": 5, "s.grown": 14, "s.churn": 4, "s.short": 2}
    recovered = {"s.quiet": 5, "s.grown": 12, "s.churn": 9, "s.short": 1}
    stats0 = {"s.quiet": (5, 0), "s.grown": (10, 0), "s.churn": (8, 4), "s.short": (2, 0)}
    stats1 = {"s.quiet": (5, 0), "s.grown": (14, 0), "s.churn": (9, 5), "s.short": (2, 0)}

    tables, problems = compare_counts(before, recovered, after, stats0, stats1, True)

    verdicts = {row["table"]: row["verdict"] for row in tables}
    assert verdicts == {
        "s.quiet": "equal", "s.grown": "within", "s.churn": "changed", "s.gone": "MISSING",
        "s.short": "MISMATCH",
    }  # fmt: skip
    assert len(problems) == 2 and any("s.short: 1 rows recovered" in p for p in problems)
    tables, problems = compare_counts(before, {}, after, stats0, stats1, False)
    assert problems == [] and {row["verdict"] for row in tables} == {"not compared"}


def test_pitr_drill_rpo_is_zero_only_when_no_commit_is_missing() -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    replayed = base + timedelta(seconds=50)
    end = PrimaryEnd(base + timedelta(seconds=90), 0, 100, None)
    assert recovery_point_objective(end, [], replayed, base)[:2] == (0.0, True)
    assert recovery_point_objective(end, [99], replayed, base)[:2] == (40.0, False)
    assert recovery_point_objective(end, None, None, base)[:2] == (90.0, False)
    tracked = PrimaryEnd(end.now, 0, 100, base + timedelta(seconds=51.5))
    assert recovery_point_objective(tracked, [99], replayed, base)[:2] == (1.5, True)
