"""Session-wide test services: private Redis/PostgreSQL servers, never the machine's own."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

# `tests.support` must import however pytest is launched (`pytest`, `python -m pytest`,
# any cwd or import mode), so put the repo root on sys.path explicitly.
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from tests.support.emulators import Azurite, GcsEmulator  # noqa: E402
from tests.support.s3 import CREDENTIALS as S3_CREDENTIALS  # noqa: E402
from tests.support.s3 import Bucket, MotoServer, new_bucket  # noqa: E402
from tests.support.services import (  # noqa: E402
    PgDatabase,
    PostgresCluster,
    RedisServer,
    ServiceUnavailable,
    temporary_database,
)
from tests.support.worker import LifeosEnv, WorkerProcess  # noqa: E402

_T = TypeVar("_T")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("faults", "fault campaign (tests/faults)")
    group.addoption(
        "--fault-rounds",
        type=int,
        default=int(os.environ.get("LIFEOS_FAULT_ROUNDS", "6")),
        help="rounds of the fault campaign, one injected fault each (default 6: one per type)",
    )
    group.addoption(
        "--fault-max-outage",
        type=float,
        default=12.0,
        help="longest Redis outage in seconds (the long campaign uses 40)",
    )


def _start(factory: Callable[[], _T]) -> _T:
    """Start a service; a missing/broken one is a test failure with a plain message, not a skip."""
    try:
        return factory()
    except ServiceUnavailable as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One throwaway redis-server per session, started only if a test asks for it."""
    server = _start(RedisServer)
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of an empty Redis DB (numbers cycle 1..15 and are flushed before use)."""
    return redis_server.url(redis_server.fresh_db())


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL cluster per session; fails (not skips) without binaries."""
    cluster = _start(PostgresCluster)
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_database(pg_cluster: PostgresCluster) -> Iterator[PgDatabase]:
    """A fresh `lifeos_test_<uuid8>` database, dropped after the test."""
    with temporary_database(pg_cluster) as database:
        yield database


@pytest.fixture
def pg_url(pg_database: PgDatabase) -> str:
    """Shortcut: the libpq URL of `pg_database`."""
    return pg_database.url


@pytest.fixture
def lifeos_env(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LifeosEnv]:
    """A private backup root, app dir (empty data/), SQLite catalog and Redis DB for one test.

    The backup root exists, as on a running system (`up`, the workers or `catalog rebuild
    --from offsite` create it): the CLI refuses to read or change backups without one."""
    from lifeos_backup.core.fsutil import private_dir
    from lifeos_backup.core.settings import get_settings

    app_dir = tmp_path / "app"
    (app_dir / "data").mkdir(parents=True)
    private_dir(tmp_path / "backups")
    env = LifeosEnv(tmp_path)
    for key in [k for k in os.environ if k.startswith("LIFEOS_")]:
        monkeypatch.delenv(key)
    values = {
        "LIFEOS_BACKUP_ROOT": str(tmp_path / "backups"),
        "LIFEOS_APP_DIR": str(app_dir),
        "LIFEOS_REDIS_URL": redis_url,
        "LIFEOS_LOCK_TTL": "3",
        "LIFEOS_RETRY_BACKOFF_MAX": "2",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    env.vars.update(values)
    get_settings.cache_clear()
    yield env
    # env.set() writes os.environ directly; drop every LIFEOS_* so none leaks into later tests
    # (monkeypatch then restores what was there before this test).
    for key in [k for k in os.environ if k.startswith("LIFEOS_")]:
        del os.environ[key]
    get_settings.cache_clear()


@pytest.fixture
def start_worker(lifeos_env: LifeosEnv) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: start a real Celery worker with the test's LIFEOS_* env (plus overrides)."""
    started: list[WorkerProcess] = []

    def start(
        concurrency: int = 1,
        queues: str | None = None,
        hostname: str | None = None,
        **extra_env: str,
    ) -> WorkerProcess:
        index = len(started)
        proc = WorkerProcess(
            lifeos_env.subprocess_env(**extra_env),
            lifeos_env.root / f"worker-{index}.log",
            concurrency=concurrency,
            queues=queues,
            hostname=hostname,
        )
        started.append(proc)
        proc.wait_ready()
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto S3 server process per session (HTTP on a free port), started on demand."""
    server = _start(MotoServer)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GcsEmulator]:
    """One gcp-storage-emulator process per session (in memory, a free port), on demand."""
    server = _start(GcsEmulator)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """One Azurite blob service per session (in memory, a free port), on demand."""
    server = _start(Azurite)
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(
    moto_server: MotoServer, lifeos_env: LifeosEnv, monkeypatch: pytest.MonkeyPatch
) -> Bucket:
    """A fresh bucket configured as the test's off-site storage (5 MiB parts, fake keys)."""
    from lifeos_backup.core.settings import get_settings

    bucket = new_bucket(moto_server)
    values = {
        "LIFEOS_S3_ENDPOINT_URL": moto_server.url,
        "LIFEOS_S3_BUCKET": bucket.name,
        "LIFEOS_S3_PREFIX": bucket.prefix,
        "LIFEOS_S3_PART_SIZE_MB": "5",
        "LIFEOS_S3_MAX_ATTEMPTS": "2",
        **S3_CREDENTIALS,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    lifeos_env.vars.update(values)
    get_settings.cache_clear()
    return bucket
