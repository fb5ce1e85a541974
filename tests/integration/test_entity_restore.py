"""Entity restore from a PostgreSQL backup with the reference schema: real PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from lifeos_backup.jobs.backups import create_backup, verify_backup
from tests.support.lifeos_app import load_schema, seed, table_hashes
from tests.support.services import PgDatabase
from tests.support.worker import LifeosEnv

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).with_name("lifeos-backup"))


def cli(env: LifeosEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args],
        env=env.subprocess_env(USER="carol"),
        capture_output=True,
        text=True,
        timeout=120,
    )


def restore(env: LifeosEnv, backup_id: str, *args: str) -> dict:
    result = cli(
        env,
        "restore",
        "entity",
        "--backup",
        backup_id,
        "--table",
        "characters",
        "--id",
        "c-1",
        "--json",
        *args,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def scratch_databases(db: PgDatabase) -> list[str]:
    with psycopg.connect(db.cluster.url("postgres")) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{db.name}_entity_%",)
        ).fetchall()
    return [r[0] for r in rows]


@pytest.fixture
def backed_up(lifeos_env: LifeosEnv, pg_database: PgDatabase) -> tuple[str, dict[str, str]]:
    """A verified backup of the seeded database, then later work on another character, then the
    accident: character c-1 deleted (cascading its outfits and compositions, and nulling the
    outfit of c-2's composition p-3). Returns the backup id and the hashes before the accident."""
    load_schema(pg_database.url)
    seed(pg_database.url)
    lifeos_env.set(LIFEOS_DATABASE_URL=pg_database.url)
    settings, catalog = lifeos_env.settings(), lifeos_env.catalog()
    backup_id = create_backup("postgres", settings, catalog).backup_id
    verify_backup(backup_id, settings, catalog)
    with psycopg.connect(pg_database.url) as conn:
        conn.execute(
            "UPDATE characters SET name = 'renamed after the backup' WHERE character_id = 'c-3'"
        )
        conn.execute(
            "INSERT INTO outfits (outfit_id, character_id, name) VALUES"
            " ('o-new', 'c-2', 'made after the backup')"
        )
    before = table_hashes(pg_database.url)
    with psycopg.connect(pg_database.url) as conn:
        conn.execute("DELETE FROM characters WHERE character_id = 'c-1'")
        gone = conn.execute("SELECT count(*) FROM outfits WHERE character_id = 'c-1'").fetchone()
    assert gone == (0,)
    return backup_id, before


def test_show_only_changes_nothing(
    lifeos_env: LifeosEnv, pg_database: PgDatabase, backed_up: tuple[str, dict[str, str]]
) -> None:
    backup_id, _ = backed_up
    after_accident = table_hashes(pg_database.url)
    report = restore(lifeos_env, backup_id, "--with-children")
    assert report["applied"] is False
    assert report["counts"] == {
        "public.characters": {"missing": 1, "differs": 0, "same": 0},
        "public.outfits": {"missing": 2, "differs": 0, "same": 0},
        # p-1, p-2 went with c-1; p-3 (of c-2) lost its outfit o-2 to ON DELETE SET NULL
        "public.compositions": {"missing": 2, "differs": 1, "same": 0},
    }
    p3 = next(r for r in report["rows"] if r["key"] == {"composition_id": "p-3"})
    assert p3["differences"] == {"outfit_id": [None, "o-2"]}
    assert report["rows"][0]["backup"]["name"] == "Zoë Ångström"
    assert table_hashes(pg_database.url) == after_accident
    assert scratch_databases(pg_database) == []
    assert lifeos_env.catalog().actions("entity.") == []


def test_row_alone_comes_back_and_nothing_else_moves(
    lifeos_env: LifeosEnv, pg_database: PgDatabase, backed_up: tuple[str, dict[str, str]]
) -> None:
    backup_id, before = backed_up
    after_accident = table_hashes(pg_database.url)
    report = restore(lifeos_env, backup_id, "--apply")
    assert report["applied"] and [r["table"] for r in report["rows"]] == ["public.characters"]
    now = table_hashes(pg_database.url)
    assert now["characters"] == before["characters"]  # c-1 exactly as before, c-3's rename kept
    assert {t: h for t, h in now.items() if t != "characters"} == {
        t: h for t, h in after_accident.items() if t != "characters"
    }
    assert scratch_databases(pg_database) == []


def test_with_children_brings_back_the_cascade_exactly(
    lifeos_env: LifeosEnv, pg_database: PgDatabase, backed_up: tuple[str, dict[str, str]]
) -> None:
    backup_id, before = backed_up
    result = cli(
        lifeos_env,
        "restore",
        "entity",
        "--backup",
        backup_id,
        "--table",
        "characters",
        "--id",
        "c-1",
        "--with-children",
        "--apply",
    )
    assert result.returncode == 0, result.stderr
    assert "inserted" in result.stdout and "written back in one transaction" in result.stderr
    # Every table's full content equals its content before the accident: the lost rows are
    # back, and the rows changed or added after the backup (c-3, o-new) are untouched.
    assert table_hashes(pg_database.url) == before
    assert scratch_databases(pg_database) == []
    [action] = lifeos_env.catalog().actions("entity.restore")
    assert (action.target, action.actor, action.backup_id) == ("characters:c-1", "carol", backup_id)
    written = json.loads(action.detail)["written"]
    assert written == {
        "public.characters": {"inserted": 1, "updated": 0},
        "public.outfits": {"inserted": 2, "updated": 0},
        "public.compositions": {"inserted": 2, "updated": 1},
    }
    with psycopg.connect(pg_database.url) as conn:  # a second run has nothing left to do
        conn.execute("SELECT 1")
    again = restore(lifeos_env, backup_id, "--with-children", "--apply")
    assert all(r["status"] == "same" for r in again["rows"])


def test_unknown_row_or_table_is_a_clear_error_and_drops_the_scratch_database(
    lifeos_env: LifeosEnv, pg_database: PgDatabase, backed_up: tuple[str, dict[str, str]]
) -> None:
    backup_id, _ = backed_up
    result = cli(
        lifeos_env,
        "restore",
        "entity",
        "--backup",
        backup_id,
        "--table",
        "characters",
        "--id",
        "nobody",
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no row character_id = 'nobody' in characters of the backup" in result.stderr
    assert scratch_databases(pg_database) == []
    result = cli(
        lifeos_env, "restore", "entity", "--backup", backup_id, "--table", "dragons", "--id", "x"
    )
    assert result.returncode == 1 and "table 'dragons' is not in the backup" in result.stderr


def test_integer_key_given_as_text_and_the_sequence_moves_past_it(
    lifeos_env: LifeosEnv, pg_database: PgDatabase, backed_up: tuple[str, dict[str, str]]
) -> None:
    backup_id, before = backed_up
    with psycopg.connect(pg_database.url) as conn:
        conn.execute("DELETE FROM favorites WHERE favorite_id = 3")
        conn.execute("SELECT setval('favorites_favorite_id_seq', 1)")  # as after a bad reset
    result = cli(
        lifeos_env,
        "restore",
        "entity",
        "--backup",
        backup_id,
        "--table",
        "favorites",
        "--id",
        "3",
        "--apply",
    )
    assert result.returncode == 0, result.stderr
    assert table_hashes(pg_database.url)["favorites"] == before["favorites"]
    with psycopg.connect(pg_database.url) as conn:
        assert conn.execute("SELECT nextval('favorites_favorite_id_seq')").fetchone()[0] > 3


def test_apply_with_nothing_to_change_writes_and_records_nothing(
    lifeos_env: LifeosEnv, pg_database: PgDatabase, backed_up: tuple[str, dict[str, str]]
) -> None:
    """c-2 and its rows are in production as in the backup: --apply says so, and neither a
    transaction nor an audit record pretends that something was restored."""
    backup_id, _ = backed_up
    with psycopg.connect(pg_database.url) as conn:  # undo the later work on c-2's outfits
        conn.execute("DELETE FROM outfits WHERE outfit_id = 'o-new'")
    unchanged = table_hashes(pg_database.url)
    result = cli(
        lifeos_env,
        "restore",
        "entity",
        "--backup",
        backup_id,
        "--table",
        "characters",
        "--id",
        "c-2",
        "--apply",
    )
    assert result.returncode == 0, result.stderr
    assert "same as production" in result.stdout
    assert (
        f"nothing to change: production already holds characters c-2 as in backup {backup_id};"
        " nothing was written or recorded" in result.stderr
    )
    assert "written back" not in result.stderr
    assert table_hashes(pg_database.url) == unchanged
    assert lifeos_env.catalog().actions("entity.") == []
    assert scratch_databases(pg_database) == []
    report = restore(lifeos_env, backup_id, "--with-children", "--apply")  # c-1: deleted
    assert report["applied"] and not report["nothing_to_change"]
