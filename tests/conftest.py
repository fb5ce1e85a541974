"""Session-wide test services: private Redis/PostgreSQL servers, never the machine's own."""

from __future__ import annotations

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

from tests.support.services import (  # noqa: E402
    PgDatabase,
    PostgresCluster,
    RedisServer,
    ServiceUnavailable,
    temporary_database,
)

_T = TypeVar("_T")


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
