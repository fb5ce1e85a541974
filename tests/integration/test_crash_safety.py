"""Crash-safe jobs: a killed worker's backup is finished by its redelivery, a restarted database is
retried, and a burst of requests strands nothing. Real Redis, PostgreSQL and Celery workers.

The lock TTL and the visibility timeout are set far beyond each test's own time limit, so a test
passes only if the system does not wait them out.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from celery.result import AsyncResult

from lifeos_backup.app.client import backup_chain, make_app, wait_verified
from lifeos_backup.jobs.leftovers import INTERRUPTED
from lifeos_backup.storage.catalog.store import CREATED, FAILED, RUNNING, VERIFIED
from tests.support.services import PgDatabase, PostgresCluster, temporary_database
from tests.support.trees import make_tree
from tests.support.worker import LifeosEnv, WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
SLOW_JSON = {"LIFEOS_COMPRESSION": "gzip", "LIFEOS_COMPRESSION_LEVEL": "9"}
NEVER = {"LIFEOS_LOCK_TTL": "900", "LIFEOS_VISIBILITY_TIMEOUT": "3600"}


@pytest.fixture(scope="module")
def big_database(pg_cluster: PostgresCluster) -> Iterator[PgDatabase]:
    """About 150 MB of rows, so a dump runs long enough to be interrupted."""
    with temporary_database(pg_cluster, prefix="lifeos_crash_") as database:
        with psycopg.connect(database.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL)")
            conn.execute(
                "INSERT INTO notes SELECT g, repeat(md5(g::text), 3) "
                "FROM generate_series(1, 1200000) g"
            )
            conn.execute("VACUUM ANALYZE notes")
        yield database


def _wait_for_progress(app, task_id: str, worker: WorkerProcess, phase: str | None = None) -> None:
    deadline = time.monotonic() + 60
    while True:
        result = AsyncResult(task_id, app=app)
        if result.state == "PROGRESS" and (phase is None or result.info.get("phase") == phase):
            return
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.02)


def _statuses(env: LifeosEnv) -> dict[str, str]:
    return {row.id: row.status for row in env.catalog().list()}


def _settled(env: LifeosEnv, kind_folder: str) -> None:
    """What must hold once the stack settled: no backup left running or created, no leftover
    file, no lock or lease outliving its holder."""
    assert not [s for s in _statuses(env).values() if s in (RUNNING, CREATED)], _statuses(env)
    folder = env.backup_root / kind_folder
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".partial")]
    assert not list(env.redis().scan_iter("lifeos:lock:backup:*"))
    leases = env.backup_root / ".state" / "leases"
    assert not leases.exists() or not list(leases.iterdir())


def _kill_pool_process(worker: WorkerProcess) -> int:
    [pool] = worker.pool_pids()
    os.kill(pool, signal.SIGKILL)
    return pool


def test_a_killed_pool_process_s_json_backup_is_finished_by_its_redelivery(
    lifeos_env: LifeosEnv, start_worker
) -> None:
    make_tree(lifeos_env.app_dir, files=900, size=40_000)
    worker = start_worker(**SLOW_JSON, **NEVER)
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    steps, ref = backup_chain(app, "json", "killed mid-way", "test")
    steps.apply_async()
    _wait_for_progress(app, ref.create_task_id, worker)
    _kill_pool_process(worker)

    backup_id = wait_verified(app, ref, timeout=150)  # the same request, redelivered
    statuses = _statuses(lifeos_env)
    assert statuses.pop(backup_id) == VERIFIED
    assert list(statuses.values()) == [FAILED]  # the killed run
    [killed] = statuses
    assert lifeos_env.catalog().get(killed).error == INTERRUPTED
    _settled(lifeos_env, "json")


def test_a_killed_pool_process_s_dump_is_finished_by_its_redelivery(
    lifeos_env: LifeosEnv, start_worker, big_database: PgDatabase
) -> None:
    lifeos_env.set(LIFEOS_DATABASE_URL=big_database.url)
    worker = start_worker(**NEVER)
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    steps, ref = backup_chain(app, "postgres", "killed mid-dump", "test")
    steps.apply_async()
    _wait_for_progress(app, ref.create_task_id, worker, phase="dumping")
    _kill_pool_process(worker)

    backup_id = wait_verified(app, ref, timeout=180)
    statuses = _statuses(lifeos_env)
    assert statuses.pop(backup_id) == VERIFIED
    assert list(statuses.values()) == [FAILED]
    _settled(lifeos_env, "postgresql/full")
    with psycopg.connect(big_database.url) as conn:  # the killed pg_dump left no session behind
        left = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pg_dump%'"
        ).fetchone()
    assert left == (0,)


def test_a_killed_main_process_s_job_is_put_back_by_its_restarted_worker(
    lifeos_env: LifeosEnv, start_worker
) -> None:
    make_tree(lifeos_env.app_dir, files=900, size=40_000)
    node = f"crash-{os.getpid()}@%h"
    worker = start_worker(hostname=node, **SLOW_JSON, **NEVER)
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    steps, ref = backup_chain(app, "json", "main process killed", "test")
    steps.apply_async()
    _wait_for_progress(app, ref.create_task_id, worker)
    [pool] = worker.pool_pids()
    os.kill(worker.popen.pid, signal.SIGKILL)  # the main process only
    worker.popen.wait(10)
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pool}").exists() and _state(pool) != "Z":
        assert time.monotonic() < deadline, "the pool process outlived its worker"
        time.sleep(0.1)

    start_worker(hostname=node, **NEVER)  # as `up` or compose restart it
    backup_id = wait_verified(app, ref, timeout=150)  # visibility timeout 3600 s: not waited
    statuses = _statuses(lifeos_env)
    assert statuses.pop(backup_id) == VERIFIED
    assert list(statuses.values()) == [FAILED]
    _settled(lifeos_env, "json")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return "gone"


def test_a_database_restart_during_a_dump_is_retried_and_ends_verified(
    lifeos_env: LifeosEnv, start_worker, big_database: PgDatabase, pg_cluster: PostgresCluster
) -> None:
    lifeos_env.set(LIFEOS_DATABASE_URL=big_database.url, LIFEOS_RETRY_MAX="10")
    worker = start_worker()
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    steps, ref = backup_chain(app, "postgres", "server restarts", "test")
    steps.apply_async()
    _wait_for_progress(app, ref.create_task_id, worker, phase="dumping")
    pg_cluster.restart()

    backup_id = wait_verified(app, ref, timeout=180)
    runs = [r for r in lifeos_env.catalog().task_runs(ref.create_task_id)]
    assert [r.state for r in runs][-1] == "succeeded"
    retried = [r for r in runs if r.state == "retrying"]
    assert retried, [(r.state, r.error) for r in runs]
    assert all("PostgreSQL" in (r.error or "") or "pg_dump" in (r.error or "") for r in retried)
    statuses = _statuses(lifeos_env)
    assert statuses.pop(backup_id) == VERIFIED
    assert set(statuses.values()) <= {FAILED}
    _settled(lifeos_env, "postgresql/full")


def test_a_burst_of_requests_strands_no_backup(lifeos_env: LifeosEnv, start_worker) -> None:
    """As `up` runs them: creates one after another on `dumps`, each verify on another worker
    while the next create cleans up before it starts."""
    make_tree(lifeos_env.app_dir, files=300, size=40_000)
    start_worker(concurrency=1, queues="dumps", **SLOW_JSON)
    start_worker(concurrency=2, queues="uploads,drills,maintenance", **SLOW_JSON)
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    refs = []
    for reason in ("one", "two", "three"):
        steps, ref = backup_chain(app, "json", reason, "test")
        steps.apply_async()
        refs.append(ref)
    for ref in refs:  # every chain ends: its rotate step ran, or its create was skipped
        deadline = time.monotonic() + 120
        while not (
            AsyncResult(ref.rotate_task_id, app=app).ready()
            or AsyncResult(ref.create_task_id, app=app).state == "FAILURE"
        ):
            assert time.monotonic() < deadline, _statuses(lifeos_env)
            time.sleep(0.1)
    statuses = _statuses(lifeos_env)
    assert len(statuses) == 3 and set(statuses.values()) == {VERIFIED}, statuses
    _settled(lifeos_env, "json")


def test_a_starting_worker_resolves_its_host_s_dead_backups(
    lifeos_env: LifeosEnv, start_worker
) -> None:
    from lifeos_backup.jobs.backups import create_backup

    make_tree(lifeos_env.app_dir, files=5)
    settings, catalog = lifeos_env.settings(), lifeos_env.catalog()
    good = create_backup("json", settings, catalog)  # created, its verify message never sent
    folder = lifeos_env.backup_root / "json"
    dead = "json_backup_20200101_000000"
    (folder / f".{dead}.tar.zst.partial").write_bytes(b"half")
    from lifeos_backup.storage.catalog import Backup
    from lifeos_backup.storage.catalog.store import utcnow

    catalog.add_backup(
        Backup(id=dead, kind="json", status=RUNNING, path=f"json/{dead}.tar.zst",
               host=os.uname().nodename, created_at=utcnow())
    )  # fmt: skip
    catalog.update(good.backup_id, finished_at=utcnow().replace(year=2020))  # long ago
    worker = start_worker()
    deadline = time.monotonic() + 30
    while {_statuses(lifeos_env)[i] for i in (dead, good.backup_id)} & {RUNNING, CREATED}:
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.1)
    assert catalog.get(dead).error == INTERRUPTED
    assert catalog.get(good.backup_id).status == FAILED  # never verified: no good backup
    assert not (folder / f".{dead}.tar.zst.partial").exists()
