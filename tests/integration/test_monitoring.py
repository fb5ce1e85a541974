"""Restore drills, health checks, self-healing, alerts, status, selftest and metrics.

Real PostgreSQL (drills restore into scratch databases on the test cluster), real Redis (alert and
catch-up state), a real Celery worker (the catch-up backup and the drill task), the real CLI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest

from lifeos_backup.app.client import make_app
from lifeos_backup.jobs.backups import create_backup, verify_backup
from lifeos_backup.monitoring import records
from lifeos_backup.monitoring.alerts import ALERTS_KEY
from lifeos_backup.monitoring.checkup import CATCHUP_KEY, request_catch_up, run_health_check
from lifeos_backup.monitoring.drill import WORKSPACE, run_drill
from lifeos_backup.monitoring.health import disk_usage, evaluate_health
from lifeos_backup.storage.catalog import Backup, Catalog
from lifeos_backup.storage.catalog.store import VERIFIED, utcnow
from tests.support.lifeos_app import TABLES, load_schema, seed
from tests.support.services import PostgresCluster, free_port
from tests.support.trees import make_tree
from tests.support.webhook import WebhookReceiver
from tests.support.worker import LifeosEnv

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).with_name("lifeos-backup"))
STARTED = "[lifeos-backup] CRITICAL: json backup overdue"
RESOLVED = "[lifeos-backup] RESOLVED: json backup overdue"


def cli(
    env: LifeosEnv, *args: str, timeout: float = 120, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args],
        env=env.subprocess_env(**extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def good_backup(env: LifeosEnv, kind: str = "json") -> str:
    """Create and verify a backup in this process; its id."""
    settings, catalog = env.settings(), env.catalog()
    backup_id = create_backup(kind, settings, catalog).backup_id
    verify_backup(backup_id, settings, catalog)
    return backup_id


def age(catalog: Catalog, backup_id: str, hours: float) -> None:
    """Pretend the backup was made `hours` ago (as if Beat had been down since)."""
    when = utcnow() - timedelta(hours=hours)
    catalog.update(backup_id, created_at=when, finished_at=when, verified_at=when)


def wait_for_task_run(catalog: Catalog, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r.task_name == name and r.finished_at for r in catalog.task_runs()):
            return
        time.sleep(0.1)
    raise AssertionError(f"no finished {name} task run within {timeout}s")


def scratch_databases(cluster: PostgresCluster) -> list[str]:
    import psycopg

    with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        rows = conn.execute(r"SELECT datname FROM pg_database WHERE datname LIKE '%\_drill\_%'")
        return sorted(str(name) for (name,) in rows)


@pytest.fixture
def pg_backup(lifeos_env: LifeosEnv, pg_url: str) -> str:
    """The reference Life-OS schema with seed rows, and a verified PostgreSQL backup of it."""
    load_schema(pg_url)
    seed(pg_url)
    lifeos_env.set(LIFEOS_DATABASE_URL=pg_url)
    return good_backup(lifeos_env, "postgres")


# ----------------------------------------------------------------------------- drills


def test_postgres_drill_passes_runs_checks_and_leaves_no_scratch_database(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster, pg_backup: str, tmp_path: Path
) -> None:
    database = lifeos_env.vars["LIFEOS_DATABASE_URL"].rsplit("/", 1)[1]
    dead = f"{database}_drill_20000101_000000"  # left by a drill whose worker was killed
    young = f"{database}_drill_{utcnow() - timedelta(minutes=10):%Y%m%d_%H%M%S}"  # maybe running
    pg_cluster.create_database(dead)
    pg_cluster.create_database(young)
    marker = tmp_path / "migrated.txt"
    script = tmp_path / "migrate.py"
    script.write_text(
        "import os, sys, psycopg\n"
        "with psycopg.connect(os.environ['APP_DB']) as conn:\n"
        "    name = conn.execute('SELECT current_database()').fetchone()[0]\n"
        "    conn.execute('CREATE TABLE migrated_by_drill (id int)')\n"
        "open(sys.argv[1], 'w').write(name)\n"
        "print('migrated', name)\n"
    )
    lifeos_env.set(
        LIFEOS_DRILL_SANITY_QUERIES=json.dumps(
            [
                "SELECT count(*) = 3 FROM characters",
                "SELECT EXISTS (SELECT 1 FROM favorites WHERE user_id = 'u-1')",
            ]
        ),
        LIFEOS_DRILL_MIGRATE_COMMAND=f"{sys.executable} {script} {marker}",
        LIFEOS_DRILL_MIGRATE_URL_ENV="APP_DB",
    )
    try:
        result = cli(lifeos_env, "drill", "--kind", "postgres", "--json")
        assert result.returncode == 0, result.stderr + result.stdout
        [report] = json.loads(result.stdout)
        assert report["status"] == "passed" and report["backup_id"] == pg_backup
        details = report["details"]
        scratch = details["scratch_database"]
        assert scratch.startswith(f"{database}_drill_")
        assert {t["table"] for t in details["tables"]} >= {f"public.{t}" for t in TABLES}
        assert all(t["expected"] == t["restored"] for t in details["tables"])
        assert [q["ok"] for q in details["sanity_queries"]] == [True, True]
        assert details["migration"]["ok"] is True
        assert marker.read_text() == scratch  # the command ran against the scratch database
        assert details["scratch_dropped"] is True
        assert details["leftovers_dropped"] == [dead]
        assert report["restore_s"] > 0
        assert scratch_databases(pg_cluster) == [young]  # ours and the dead one are gone
        folder = Path(report["report_dir"])
        assert folder.parent == lifeos_env.backup_root / "drills"
        assert json.loads((folder / "report.json").read_text())["status"] == "passed"
        log = (folder / "drill.log").read_text()
        assert "drill PASSED" in log and "public.characters" in log and "migrated" in log
        [row] = records.history(lifeos_env.catalog(), "postgres")
        assert (row.status, row.backup_id) == ("passed", pg_backup)
        assert row.restore_s == pytest.approx(report["restore_s"], abs=1e-3)
    finally:
        pg_cluster.drop_database(young)


def test_drill_of_tampered_row_counts_fails_on_worker_and_drops_scratch(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster, pg_backup: str, start_worker
) -> None:
    mpath = lifeos_env.backup_root / "postgresql" / "full" / f"{pg_backup}.manifest.json"
    manifest = json.loads(mpath.read_text())
    for table in manifest["facts"]["tables"]:
        if table["name"] == "characters":
            table["rows"] += 5  # the archive holds 3 rows; the manifest now promises 8
    mpath.write_text(json.dumps(manifest))
    lifeos_env.set(LIFEOS_DRILL_SANITY_QUERIES='["SELECT count(*) > 100 FROM outfits"]')
    start_worker()
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    result = app.send_task("lifeos.drill.run", kwargs={"kind": "postgres"})
    with pytest.raises(Exception, match="restore drill failed") as failure:
        result.get(timeout=120)
    assert pg_backup in str(failure.value)
    [row] = records.history(lifeos_env.catalog(), "postgres")
    assert row.status == "failed"
    problems = records.details_of(row)["problems"]
    assert "public.characters: 3 rows, manifest says 8" in problems
    assert any("sanity query failed" in p and "outfits" in p for p in problems)
    assert records.details_of(row)["scratch_dropped"] is True
    assert scratch_databases(pg_cluster) == []
    conditions = evaluate_health(lifeos_env.settings(), lifeos_env.catalog())
    assert "drill_failed:postgres" in {c.key for c in conditions}


def test_json_drill_passes_then_fails_on_corrupt_archive_and_bad_json(
    lifeos_env: LifeosEnv,
) -> None:
    make_tree(lifeos_env.app_dir, files=30)
    settings, catalog = lifeos_env.settings(), lifeos_env.catalog()
    first = good_backup(lifeos_env)
    passed = run_drill(settings, catalog, "json")
    assert passed.passed and passed.backup_id == first, passed.error
    assert passed.details["files_restored"] == 30
    assert passed.details["json_files_parsed"] == 30
    assert passed.restore_s is not None and passed.restore_s > 0

    archive = lifeos_env.backup_root / catalog.get(first).path
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    corrupt = run_drill(settings, catalog, "json", backup_id=first)
    assert not corrupt.passed
    assert "corrupt" in (corrupt.error or "") or "SHA-256" in (corrupt.error or "")
    assert {(r.id, r.status) for r in records.history(catalog, "json")} == {
        (passed.drill_id, "passed"),
        (corrupt.drill_id, "failed"),
    }

    keys = {c.key for c in evaluate_health(settings, catalog)}
    assert "drill_failed:json" in keys

    # Files that were already no valid JSON when backed up (a half-written file, an empty one):
    # the copy is faithful, so the drill passes and names them.
    (lifeos_env.app_dir / "data" / "broken.json").write_text('{"half": ')
    (lifeos_env.app_dir / "configs" / "empty.json").write_bytes(b"")
    second = good_backup(lifeos_env)
    faithful = run_drill(settings, catalog, "json")
    assert faithful.backup_id == second and faithful.passed, faithful.error
    assert [item.split(" (")[0] for item in faithful.details["invalid_json_at_backup"]] == [
        "configs/empty.json",
        "data/broken.json",
    ]
    assert list((lifeos_env.backup_root / WORKSPACE).iterdir()) == []  # nothing left extracted
    keys = {c.key for c in evaluate_health(settings, catalog)}
    assert "drill_failed:json" not in keys


# ----------------------------------------------------------------------------- health


def test_overdue_backup_alerts_once_heals_once_and_resolves(
    lifeos_env: LifeosEnv, start_worker
) -> None:
    receiver = WebhookReceiver()
    dead_notifier = f"json://127.0.0.1:{free_port()}/"  # nobody listens: fails on every send
    try:
        lifeos_env.set(LIFEOS_ALERT_URLS=f"{receiver.url},{dead_notifier}")
        make_tree(lifeos_env.app_dir, files=10)
        old = good_backup(lifeos_env)
        age(lifeos_env.catalog(), old, 30)
        settings, catalog, client = lifeos_env.settings(), lifeos_env.catalog(), lifeos_env.redis()
        app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
        requested: list[str] = []

        def enqueue(kind: str, reason: str) -> dict[str, str]:
            requested.append(kind)
            return request_catch_up(app, kind, reason)

        for _ in range(3):  # no worker yet: the catch-up waits in the queue
            result = run_health_check(settings, catalog, client, enqueue)
            assert result["status"] == "critical"
        assert requested == ["json"]
        assert receiver.titles() == [STARTED]
        assert client.hexists(CATCHUP_KEY, "json")

        start_worker()  # runs the catch-up chain, then the health check chained after it
        receiver.wait_for("RESOLVED", timeout=60)
        wait_for_task_run(catalog, "lifeos.health.check")  # it sends, then stores its state
        for _ in range(2):
            assert run_health_check(settings, catalog, client, enqueue)["status"] == "healthy"
        assert receiver.titles() == [STARTED, RESOLVED]
        assert requested == ["json"]
        good = catalog.list(kind="json", statuses=(VERIFIED,))
        assert len(good) == 2 and good[0].initiator == "health-check"
        assert good[0].reason.startswith("catch-up: newest verified backup")
        assert client.hlen(ALERTS_KEY) == 0 and client.hlen(CATCHUP_KEY) == 0
        runs = [r for r in catalog.task_runs() if r.task_name == "lifeos.health.check"]
        assert runs and all(r.state == "succeeded" for r in runs)  # the dead notifier broke none
        body = receiver.messages[0]["message"]
        assert old in body and "hint:" in body
    finally:
        receiver.stop()


def _fake_good(catalog: Catalog, days_ago: float, size: int) -> str:
    when = utcnow() - timedelta(days=days_ago)
    backup_id = f"json_backup_{when:%Y%m%d_%H%M%S}"
    catalog.add_backup(
        Backup(id=backup_id, kind="json", status=VERIFIED, path=f"json/{backup_id}.tar.zst",
               size=size, created_at=when, verified_at=when)
    )  # fmt: skip
    return backup_id


def test_size_anomaly_and_low_disk_are_detected(lifeos_env: LifeosEnv) -> None:
    catalog = lifeos_env.catalog()
    for days, size in ((5, 1000), (4, 1100), (3, 900), (2, 1000)):
        _fake_good(catalog, days, size)
    _fake_good(catalog, 0.01, 1400)  # +40%: within the tolerance
    lifeos_env.set(LIFEOS_HEALTH_MIN_FREE_DISK="1B")
    assert evaluate_health(lifeos_env.settings(), catalog) == []

    newest = _fake_good(catalog, 0.001, 2600)  # +160% against the median of the earlier ones
    [odd] = evaluate_health(lifeos_env.settings(), catalog)
    assert (odd.key, odd.severity) == ("size_anomaly:json", "degraded")
    assert newest in odd.detail and "median of the previous 5" in odd.detail

    _path, free, _total = disk_usage(lifeos_env.settings())
    lifeos_env.set(LIFEOS_HEALTH_MIN_FREE_DISK=str(free + 2**30))
    keys = {c.key: c.severity for c in evaluate_health(lifeos_env.settings(), catalog)}
    assert keys == {"size_anomaly:json": "degraded", "low_disk": "degraded"}
    lifeos_env.set(LIFEOS_HEALTH_MIN_FREE_DISK="100%")
    assert "low_disk" in {c.key for c in evaluate_health(lifeos_env.settings(), catalog)}


def test_offsite_lag_and_wal_archive_conditions_only_when_in_use(lifeos_env: LifeosEnv) -> None:
    catalog = lifeos_env.catalog()
    lagging = _fake_good(catalog, 2, 1000)  # verified two days ago, never uploaded
    catalog.update(lagging, offsite_status="failed", offsite_error="403 Forbidden")
    lifeos_env.set(LIFEOS_HEALTH_MIN_FREE_DISK="1B", LIFEOS_HEALTH_MAX_AGE_HOURS="72")
    assert evaluate_health(lifeos_env.settings(), catalog) == []  # off-site is off: no check

    lifeos_env.set(LIFEOS_S3_BUCKET="backups")
    [lag] = evaluate_health(lifeos_env.settings(), catalog)
    assert (lag.key, lag.severity) == ("offsite_lag:json", "degraded")
    assert lagging in lag.detail and "403 Forbidden" in lag.detail
    catalog.update(lagging, offsite_status="uploaded", offsite_error=None)
    assert evaluate_health(lifeos_env.settings(), catalog) == []

    wal = lifeos_env.backup_root / "postgresql" / "wal"
    wal.mkdir(parents=True)
    segment = wal / "000000010000000000000003.zst"
    segment.write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(segment, (two_hours_ago, two_hours_ago))
    (wal / ".wal-status.json").write_text(
        json.dumps({"consecutive_failures": 2, "last_failure": {"error": "disk full"}})
    )
    keys = {c.key: c.severity for c in evaluate_health(lifeos_env.settings(), catalog)}
    assert keys == {
        "wal_archive_stale:postgres": "degraded",
        "wal_archive_failing:postgres": "critical",
    }
    lifeos_env.set(LIFEOS_HEALTH_WAL_MAX_AGE_SECONDS="0")
    keys = {c.key for c in evaluate_health(lifeos_env.settings(), catalog)}
    assert keys == {"wal_archive_failing:postgres"}


def test_status_exit_codes_healthy_degraded_critical(lifeos_env: LifeosEnv) -> None:
    make_tree(lifeos_env.app_dir, files=5)
    backup_id = good_backup(lifeos_env)
    healthy = cli(lifeos_env, "status", "--json", LIFEOS_HEALTH_MIN_FREE_DISK="1B")
    assert healthy.returncode == 0, healthy.stderr
    report = json.loads(healthy.stdout)
    assert report["status"] == "healthy" and report["conditions"] == []
    [json_kind] = report["kinds"]
    assert json_kind["newest_good"]["id"] == backup_id and json_kind["rpo_s"] < 600

    degraded = cli(lifeos_env, "status", LIFEOS_HEALTH_MIN_FREE_DISK="100%")
    assert degraded.returncode == 1, degraded.stderr
    assert "DEGRADED" in degraded.stdout and "backup disk is filling up" in degraded.stdout

    age(lifeos_env.catalog(), backup_id, 30)
    critical = cli(lifeos_env, "status", "--json", LIFEOS_HEALTH_MIN_FREE_DISK="1B")
    assert critical.returncode == 2, critical.stderr
    [condition] = json.loads(critical.stdout)["conditions"]
    assert condition["key"] == "backup_overdue:json" and condition["severity"] == "critical"
    per_kind = cli(
        lifeos_env, "status", LIFEOS_HEALTH_MIN_FREE_DISK="1B", LIFEOS_HEALTH_MAX_AGE_HOURS="48"
    )
    assert per_kind.returncode == 0, per_kind.stdout


# ----------------------------------------------------------------------------- selftest, metrics


def test_selftest_passes_all_six_checks_and_touches_no_real_backup(
    lifeos_env: LifeosEnv, pg_url: str
) -> None:
    make_tree(lifeos_env.app_dir, files=12)
    load_schema(pg_url)
    seed(pg_url)
    result = cli(lifeos_env, "selftest", "--json", LIFEOS_DATABASE_URL=pg_url)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert [(c["name"], c["status"]) for c in report["checks"]] == [
        ("backup creation", "PASS"),
        ("extraction", "PASS"),
        ("checksum integrity", "PASS"),
        ("manifest verification", "PASS"),
        ("rollback dry run", "PASS"),
        ("rotation dry run", "PASS"),
    ]
    assert "12 files match the manifest, 12 also the source files" in report["checks"][2]["detail"]
    assert lifeos_env.catalog().list() == []  # the real catalog holds no selftest backup
    assert not (lifeos_env.backup_root / "json").exists()
    assert not (lifeos_env.backup_root / ".selftest").exists()

    table = cli(lifeos_env, "selftest")  # no database: the rollback check is skipped
    assert table.returncode == 0, table.stdout + table.stderr
    rows = [line for line in table.stdout.splitlines() if line.startswith("│ ")]
    assert len(rows) == 6
    assert "SKIP" in rows[4] and "no PostgreSQL configured" in rows[4]


def _scrape(port: int, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while True:
        try:
            with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                return response.read().decode()
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{sample} not in metrics:\n{text}")


def test_metrics_endpoint_reports_backups_drills_and_alerts(lifeos_env: LifeosEnv) -> None:
    make_tree(lifeos_env.app_dir, files=8)
    backup_id = good_backup(lifeos_env)
    drill = run_drill(lifeos_env.settings(), lifeos_env.catalog(), "json")
    port = free_port()
    proc = subprocess.Popen(
        [CLI, "metrics", "--port", str(port)],
        env=lifeos_env.subprocess_env(LIFEOS_HEALTH_MIN_FREE_DISK="1B"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        text = _scrape(port)
        size = lifeos_env.catalog().get(backup_id).size
        assert _value(text, "lifeos_backup_up") == 1
        assert _value(text, 'lifeos_backup_last_size_bytes{kind="json"}') == size
        assert _value(text, 'lifeos_backup_last_success_timestamp_seconds{kind="json"}') > 0
        assert _value(text, 'lifeos_backup_last_duration_seconds{kind="json"}') >= 0
        assert _value(text, 'lifeos_backup_rpo_seconds{kind="json"}') < 600
        assert _value(text, 'lifeos_backup_drill_last_success{kind="json"}') == 1
        assert _value(text, 'lifeos_backup_drill_last_duration_seconds{kind="json"}') > 0
        assert _value(text, 'lifeos_backup_rto_seconds{kind="json"}') == pytest.approx(
            drill.restore_s
        )
        assert _value(text, "lifeos_backup_health_status") == 0
        assert "lifeos_backup_alert_active{" not in text

        age(lifeos_env.catalog(), backup_id, 30)  # computed at scrape time: no restart needed
        text = _scrape(port)
        assert _value(text, "lifeos_backup_health_status") == 2
        sample = (
            'lifeos_backup_alert_active{condition="backup_overdue",kind="json",severity="critical"}'
        )
        assert _value(text, sample) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, proc.stderr.read() if proc.stderr else ""
