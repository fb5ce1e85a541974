"""The main app's side: request_backup(wait=True), the CLI's --wait, and the Alembic hook
against a real Alembic migration. Real PostgreSQL, Redis and Celery worker."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from lifeos_backup.app.client import BackupFailed, make_app, request_backup
from lifeos_backup.formats.manifest import read_manifest
from lifeos_backup.jobs.backups import locate
from tests.support.services import PgDatabase
from tests.support.worker import LifeosEnv

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
MIGRATIONS = Path(__file__).resolve().parents[1] / "fixtures" / "app_migrations"


def app_tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r[0] for r in rows}


def alembic(env: LifeosEnv, db: PgDatabase, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "alembic"), "-c", str(MIGRATIONS / "alembic.ini"), *args],
        env=env.subprocess_env(APP_DATABASE_URL=db.sqlalchemy_url(), APP_BACKUP_TIMEOUT="60"),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def app_db(lifeos_env: LifeosEnv, pg_database: PgDatabase) -> PgDatabase:
    """The app's database, also the one the postgres kind backs up."""
    with psycopg.connect(pg_database.url) as conn:
        conn.execute("CREATE TABLE existing (id int PRIMARY KEY)")
        conn.execute("INSERT INTO existing SELECT generate_series(1, 100)")
    lifeos_env.set(LIFEOS_DATABASE_URL=pg_database.url)
    return pg_database


def test_request_backup_returns_only_once_verified(
    lifeos_env: LifeosEnv, app_db: PgDatabase, start_worker
) -> None:
    start_worker()
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    ref = request_backup("postgres", "pre-migration", wait=True, timeout=60, app=app)
    row = lifeos_env.catalog().get(ref.backup_id or "")
    assert row.status == "verified" and row.verified_at is not None  # at return, not later
    assert (row.kind, row.reason, row.initiator) == ("postgres", "pre-migration", "app")


def test_the_wait_wakes_when_a_watched_state_is_stored(redis_url: str) -> None:
    """The client sleeps between looks on the result backend's channel: a state stored for a
    watched task ends the sleep at once; one for another task does not."""
    from lifeos_backup.app.client import _Notices

    app = make_app(redis_url)
    watched, other = str(uuid.uuid4()), str(uuid.uuid4())
    notices = _Notices(app, [watched])
    try:
        notices.wait(0.2)  # may end early on the subscription's own confirmation
        started = time.monotonic()
        app.backend.store_result(other, None, "STARTED")
        notices.wait(0.5)
        assert time.monotonic() - started >= 0.45  # another task's state: slept on
        timer = threading.Timer(0.2, app.backend.store_result, (watched, "id", "SUCCESS"))
        timer.start()
        started = time.monotonic()
        notices.wait(30)
        timer.join()
        assert time.monotonic() - started < 10  # woken by the state, not by the 30 s
    finally:
        notices.close()


def test_failing_backup_raises_with_the_reason(
    lifeos_env: LifeosEnv, app_db: PgDatabase, start_worker
) -> None:
    missing = app_db.cluster.url("no_such_database")
    start_worker(LIFEOS_DATABASE_URL=missing)
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    with pytest.raises(BackupFailed, match=r"backup create failed: .*does not exist"):
        request_backup("postgres", "pre-migration", wait=True, timeout=60, app=app)
    assert [r.status for r in lifeos_env.catalog().list()] in ([], ["failed"])


def test_cli_backup_postgres_wait_prints_the_verified_id(
    lifeos_env: LifeosEnv, app_db: PgDatabase, start_worker
) -> None:
    start_worker()
    result = subprocess.run(
        [str(BIN / "lifeos-backup"), "backup", "postgres", "--reason", "pre-migration", "--wait"],
        env=lifeos_env.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    backup_id = result.stdout.strip().splitlines()[-1]
    row = lifeos_env.catalog().get(backup_id)
    assert (row.kind, row.status, row.reason) == ("postgres", "verified", "pre-migration")


def test_alembic_hook_migrates_only_after_a_verified_backup(
    lifeos_env: LifeosEnv, app_db: PgDatabase, start_worker
) -> None:
    start_worker()
    result = alembic(lifeos_env, app_db, "upgrade", "head")
    assert result.returncode == 0, result.stderr
    assert "app_notes" in app_tables(app_db.url)
    [backup] = lifeos_env.catalog().list(kind="postgres")
    assert (backup.status, backup.reason, backup.initiator) == (
        "verified",
        "pre-migration from base",
        "alembic",
    )
    _, _, manifest_file = locate(lifeos_env.settings(), lifeos_env.catalog(), backup.id)
    manifest = read_manifest(manifest_file)
    dumped = {t["name"] for t in manifest.facts["tables"]}
    assert "existing" in dumped and "app_notes" not in dumped  # taken before the migration

    again = alembic(lifeos_env, app_db, "upgrade", "head")  # nothing to migrate: no second backup
    assert again.returncode == 0, again.stderr
    current = alembic(lifeos_env, app_db, "current")  # reads only: no backup either
    assert current.returncode == 0 and "0001 (head)" in current.stdout, current.stderr
    assert len(lifeos_env.catalog().list(kind="postgres")) == 1


def test_alembic_hook_blocks_the_migration_when_the_backup_fails(
    lifeos_env: LifeosEnv, app_db: PgDatabase, start_worker
) -> None:
    start_worker(LIFEOS_DATABASE_URL=app_db.cluster.url("no_such_database"))
    result = alembic(lifeos_env, app_db, "upgrade", "head")
    assert result.returncode != 0
    assert "migration refused: the pre-migration postgres backup was not verified" in result.stderr
    assert "does not exist" in result.stderr
    assert app_tables(app_db.url) == {"existing"}  # neither app_notes nor alembic_version
