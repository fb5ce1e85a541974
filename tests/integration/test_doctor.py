"""`lifeos-backup doctor` through the CLI in a subprocess: a healthy setup (Redis, a worker on every
queue, PostgreSQL) has no FAIL and exits 0; then one thing broken at a time (Redis hanging or
gone, the database gone, a bucket that does not exist, no worker): that line is FAIL with its fix,
the exit code 1, and the answer comes within a bounded time.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tests.support.cli import assert_failure, assert_no_traceback, run_cli
from tests.support.s3 import MotoServer
from tests.support.services import PostgresCluster, free_port
from tests.support.worker import LifeosEnv, WorkerProcess

BOUND = 10.0  # seconds: every check has 3 s; start-up and imports take the rest


def doctor(env: LifeosEnv, **extra: str) -> tuple[int, dict[str, dict[str, str]], float]:
    started = time.monotonic()
    answer = run_cli(["doctor", "--json"], env.root, env.subprocess_env(**extra), timeout=60)
    took = time.monotonic() - started
    assert_no_traceback(answer)
    assert answer.code in (0, 1), answer
    if answer.code == 1:  # the table on stdout, one `error:` line naming the failing checks
        assert_failure(answer, "failing check")
    document = json.loads(answer.stdout)
    assert document["ok"] == (answer.code == 0), answer
    return answer.code, {c["name"]: c for c in document["checks"]}, took


def failed(checks: dict[str, dict[str, str]]) -> set[str]:
    return {name for name, c in checks.items() if c["state"] == "FAIL"}


@contextmanager
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: a hung service."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def test_doctor_healthy_then_each_broken_line_fails_with_its_fix(
    lifeos_env: LifeosEnv,
    pg_cluster: PostgresCluster,
    pg_url: str,
    moto_server: MotoServer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    lifeos_env.set(LIFEOS_DATABASE_URL=pg_url, LIFEOS_PG_BIN_DIR=str(pg_cluster.bindir))
    lifeos_env.catalog()  # the repository's catalog, as `up` or the first backup makes it
    worker = start_worker(queues="dumps,uploads,drills,maintenance")

    code, checks, took = doctor(lifeos_env)
    assert code == 0, checks
    assert failed(checks) == set()
    for name in ("redis", "catalog", "repository", "database", "database privileges", "pg_dump"):
        assert checks[name]["state"] == "PASS", checks[name]
    for queue in ("dumps", "uploads", "drills", "maintenance"):
        assert checks[f"worker {queue}"]["state"] == "PASS", checks
    assert checks["off-site"]["state"] == "SKIP"
    assert checks["wal archiving"]["state"] == "SKIP"  # no base backups, archiving off
    assert took < BOUND

    with silent_port() as port:  # Redis hangs
        code, checks, took = doctor(lifeos_env, LIFEOS_REDIS_URL=f"redis://127.0.0.1:{port}/0")
    assert code == 1
    assert checks["redis"]["state"] == "FAIL" and "LIFEOS_REDIS_URL" in checks["redis"]["fix"]
    assert took < BOUND, took

    code, checks, took = doctor(lifeos_env, LIFEOS_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert code == 1 and checks["redis"]["state"] == "FAIL", checks
    assert took < BOUND, took

    gone = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    code, checks, took = doctor(lifeos_env, LIFEOS_DATABASE_URL=gone)
    assert code == 1
    assert failed(checks) == {"database"}, checks
    assert "LIFEOS_DATABASE_URL" in checks["database"]["fix"]
    assert took < BOUND, took

    code, checks, took = doctor(
        lifeos_env,
        LIFEOS_S3_ENDPOINT_URL=moto_server.url,
        LIFEOS_S3_BUCKET="no-such-bucket-here",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    assert code == 1
    assert failed(checks) == {"off-site"}, checks
    assert checks["off-site"]["fix"], checks["off-site"]
    assert took < BOUND, took

    worker.stop()
    code, checks, took = doctor(lifeos_env)
    assert code == 1
    assert failed(checks) == {f"worker {q}" for q in ("dumps", "uploads", "drills", "maintenance")}
    assert "worker -Q dumps" in checks["worker dumps"]["fix"]
    assert took < BOUND, took


def test_doctor_table_without_a_repository(lifeos_env: LifeosEnv) -> None:
    root = lifeos_env.root / "nowhere"
    answer = run_cli(["doctor"], lifeos_env.root, lifeos_env.subprocess_env(
        LIFEOS_BACKUP_ROOT=str(root)))  # fmt: skip
    assert answer.code == 1, answer
    assert_no_traceback(answer)
    assert_failure(answer, "repository", "catalog")
    assert "FAIL" in answer.stdout
    assert not root.exists()  # doctor creates nothing
