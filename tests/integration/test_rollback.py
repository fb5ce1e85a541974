"""Rollback PostgreSQL -> JSON with the reference schema: real PostgreSQL, Redis and worker."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from celery import chain, signature
from psycopg.rows import dict_row

from lifeos_backup.app.client import make_app
from lifeos_backup.formats.manifest import read_manifest
from lifeos_backup.jobs.routes import CREATE, VERIFY
from tests.support.lifeos_app import TABLES, load_schema, seed
from tests.support.worker import LifeosEnv

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).with_name("lifeos-backup"))
IDS = {
    "characters": "character_id",
    "clothing_items": "item_id",
    "outfits": "outfit_id",
    "compositions": "composition_id",
    "board_games": "game_id",
}


def cli(env: LifeosEnv, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env=env.subprocess_env(), capture_output=True, text=True, timeout=timeout
    )


def rollback(env: LifeosEnv, *args: str) -> dict[str, dict[str, Any]]:
    """Run the CLI with --json; the report per entity type."""
    result = cli(env, "rollback-to-json", "--json", *args)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    return {e["entity_type"]: e for e in report["entities"]} | {"": report}


@pytest.fixture
def app_db(lifeos_env: LifeosEnv, pg_url: str) -> str:
    load_schema(pg_url)
    seed(pg_url)
    lifeos_env.set(LIFEOS_DATABASE_URL=pg_url)
    return pg_url


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below `folder` (hidden ones too) with its content and mtime."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def rows(url: str, table: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()


def assert_same(document: dict[str, Any], row: dict[str, Any]) -> None:
    """The file's object equals the row: same keys, timestamps in ISO 8601 with UTC offset."""
    assert set(document) == set(row)
    for key, value in row.items():
        if isinstance(value, datetime):
            assert document[key].endswith("+00:00"), document[key]
            assert datetime.fromisoformat(document[key]) == value, key
        else:
            assert document[key] == value, key


def read_file(path: Path) -> Any:
    """Parse an entity file, checking its exact formatting on the way."""
    raw = path.read_bytes()
    document = json.loads(raw.decode("utf-8"))
    expected = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert raw == expected.encode("utf-8"), f"{path} is not formatted as the app writes it"
    return document


def test_round_trip_rows_to_files(lifeos_env: LifeosEnv, app_db: str) -> None:
    report = rollback(lifeos_env)
    data = lifeos_env.app_dir / "data"
    for table, id_column in IDS.items():
        table_rows = rows(app_db, table)
        assert sorted(p.name for p in (data / table).iterdir()) == sorted(
            f"{r[id_column]}.json" for r in table_rows
        )
        for row in table_rows:
            assert_same(read_file(data / table / f"{row[id_column]}.json"), row)
        assert report[table]["created"] == len(table_rows) == report[table]["rows"]
    favorites = rows(app_db, "favorites")
    for user in ("u-1", "u-2"):
        documents = read_file(data / "favorites" / f"{user}.json")
        mine = [r for r in favorites if r["user_id"] == user]  # ordered by favorite_id
        assert len(documents) == len(mine) > 0
        for document, row in zip(documents, mine, strict=True):
            assert_same(document, row)
    assert report["favorites"]["created"] == 2 and report["favorites"]["rows"] == 3
    text = (data / "characters" / "c-1.json").read_text(encoding="utf-8")
    assert "Zoë Ångström" in text and "🚀" in text  # UTF-8, not \u escapes
    assert json.loads(text)["appearance"]["hair"] == {"color": "red", "len": 3}  # JSONB embedded

    again = rollback(lifeos_env)
    for table in TABLES:
        assert (again[table]["created"], again[table]["changed"]) == (0, 0)
        assert again[table]["unchanged"] == report[table]["created"]
    assert lifeos_env.catalog().actions("rollback.to_json")[-1].actor


def test_dry_run_counts_are_right_and_nothing_is_written(
    lifeos_env: LifeosEnv, app_db: str
) -> None:
    rollback(lifeos_env)
    data = lifeos_env.app_dir / "data"
    (data / "characters" / "stray.json").write_text("{}\n")
    (data / "characters" / "notes.txt").write_text("not an entity file")
    with psycopg.connect(app_db) as conn:
        conn.execute("UPDATE characters SET name = 'Zoë II' WHERE character_id = 'c-1'")
        conn.execute(
            "INSERT INTO characters (character_id, user_id, name) VALUES ('c-9', 'u', 'N')"
        )
        conn.execute("DELETE FROM characters WHERE character_id = 'c-2'")  # cascades o-3, p-3
        conn.execute(
            "INSERT INTO favorites (user_id, entity_type, entity_id) VALUES"
            " ('u-3', 'character', 'c-9'), ('u-2', 'character', 'c-1')"
        )
    before = snapshot(data)

    dry = rollback(lifeos_env, "--dry-run")
    assert snapshot(data) == before  # not a byte, not an mtime, no temporary file
    expected = {
        # entity type: (created, changed, unchanged, orphaned)
        "characters": (1, 1, 1, 2),  # c-9 new; c-1 renamed; c-3; c-2.json and stray.json
        "outfits": (0, 0, 2, 1),  # o-3 went with c-2
        "compositions": (0, 0, 3, 1),  # p-3 went with c-2 (its outfit o-2 stays)
        "clothing_items": (0, 0, 2, 0),
        "board_games": (0, 0, 2, 0),
        "favorites": (1, 1, 1, 0),  # u-3 new; u-2 gained one; u-1 as before
    }
    got = {
        t: (dry[t]["created"], dry[t]["changed"], dry[t]["unchanged"], dry[t]["orphaned"])
        for t in TABLES
    }
    assert got == expected
    assert dry["characters"]["orphans"] == ["c-2.json", "stray.json"]
    assert dry[""]["dry_run"] is True

    real = rollback(lifeos_env)
    assert {
        t: (real[t]["created"], real[t]["changed"], real[t]["unchanged"], real[t]["orphaned"])
        for t in TABLES
    } == expected
    assert (data / "characters" / "c-2.json").exists()  # orphans are reported, never deleted
    assert json.loads((data / "characters" / "c-1.json").read_text())["name"] == "Zoë II"


def test_entity_type_selection_and_unknown_type(lifeos_env: LifeosEnv, app_db: str) -> None:
    report = rollback(lifeos_env, "--entity-type", "board_games", "--entity-type", "favorites")
    data = lifeos_env.app_dir / "data"
    assert sorted(p.name for p in data.iterdir()) == ["board_games", "favorites"]
    assert set(report) == {"board_games", "favorites", ""}

    result = cli(lifeos_env, "rollback-to-json", "--entity-type", "dragons")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: unknown entity type 'dragons'")
    assert "valid entity types: characters, clothing_items, outfits" in result.stderr


def test_table_output_for_operators(lifeos_env: LifeosEnv, app_db: str) -> None:
    result = cli(lifeos_env, "rollback-to-json", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would be created" in result.stdout and "characters" in result.stdout
    assert "nothing was written" in result.stderr
    assert not any((lifeos_env.app_dir / "data").iterdir())


def test_backup_first_leaves_a_verified_backup_taken_before_writing(
    lifeos_env: LifeosEnv, app_db: str, start_worker
) -> None:
    (lifeos_env.app_dir / "data" / "characters").mkdir()
    (lifeos_env.app_dir / "data" / "characters" / "c-1.json").write_text('{"old": true}\n')
    start_worker()
    report = rollback(lifeos_env, "--backup-first")
    backup_id = report[""]["backup_id"]
    assert backup_id and backup_id.startswith("json_backup_")
    assert lifeos_env.catalog().get(backup_id).status == "verified"
    manifest = read_manifest(lifeos_env.backup_root / "json" / f"{backup_id}.manifest.json")
    archived = {f.path for f in manifest.iter_files() if f.type == "file"}
    assert archived == {"data/characters/c-1.json"}  # the state before the rollback wrote
    assert report["characters"]["changed"] == 1 and report["characters"]["created"] == 2
    action = lifeos_env.catalog().actions("rollback.to_json")[-1]
    assert action.backup_id == backup_id


def test_backup_first_that_fails_writes_nothing(
    lifeos_env: LifeosEnv, app_db: str, start_worker, tmp_path: Path
) -> None:
    start_worker(
        LIFEOS_APP_DIR=str(tmp_path / "no-such-app")
    )  # the worker finds nothing to back up
    before = snapshot(lifeos_env.app_dir)
    result = cli(lifeos_env, "rollback-to-json", "--backup-first")
    assert result.returncode == 1, result.stdout
    assert "the JSON backup before the rollback did not verify" in result.stderr
    assert "nothing to back up" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(lifeos_env.app_dir) == before


def test_task_chained_after_verify(lifeos_env: LifeosEnv, app_db: str, start_worker) -> None:
    start_worker()
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    steps = chain(
        signature(CREATE, args=("json",), kwargs={"reason": "pre-rollback"}, app=app),
        signature(VERIFY, app=app),
        signature("lifeos.rollback.to_json", kwargs={"entity_types": ["characters"]}, app=app).set(
            task_id=str(uuid.uuid4())
        ),
    )
    result = steps.apply_async().get(timeout=60)
    assert result["backup_id"].startswith("json_backup_")
    assert [e["created"] for e in result["entities"]] == [3]
    assert lifeos_env.catalog().get(result["backup_id"]).status == "verified"
    assert (lifeos_env.app_dir / "data" / "characters" / "c-3.json").exists()
