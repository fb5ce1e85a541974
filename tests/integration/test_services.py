"""The private Redis/PostgreSQL servers the tests share work, and their per-test fixtures clean
up after themselves."""

from __future__ import annotations

import psycopg
import pytest
import redis

from tests.support.services import PgDatabase, PostgresCluster, RedisServer

pytestmark = pytest.mark.integration

# Name of the database used by test_pg_database_creates_table, checked by the next test.
_seen: dict[str, str] = {}


def test_redis_url_answers_ping_and_set_get(redis_url: str, redis_server: RedisServer) -> None:
    assert redis_url.startswith(f"redis://127.0.0.1:{redis_server.port}/")
    assert redis_server.port != 6379
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping()
        assert client.dbsize() == 0
        client.set("lifeos:test", "value")
        assert client.get("lifeos:test") == b"value"


def test_redis_url_gives_each_test_a_fresh_db(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0


def test_pg_database_creates_table(pg_database: PgDatabase, pg_cluster: PostgresCluster) -> None:
    assert pg_cluster.port != 5432
    assert pg_database.name.startswith("lifeos_test_")
    with psycopg.connect(pg_database.url) as conn:
        conn.execute("CREATE TABLE t (id serial PRIMARY KEY, note text NOT NULL)")
        conn.execute("INSERT INTO t (note) VALUES (%s)", ("héllo",))
        assert conn.execute("SELECT note FROM t").fetchone() == ("héllo",)
    assert pg_cluster.database_exists(pg_database.name)
    _seen["db"] = pg_database.name


def test_pg_database_is_dropped_after_test(pg_cluster: PostgresCluster) -> None:
    if "db" not in _seen:
        pytest.skip("needs test_pg_database_creates_table to run first in this session")
    with psycopg.connect(pg_cluster.url("postgres")) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s", (_seen["db"],)
        ).fetchone()
    assert row == (0,)
