"""`ls`, `find`, `diff` and `restore json --include` through the installed CLI, on real backups
made with the plain functions (no worker)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zstandard

from lifeos_backup.jobs.backups import create_backup, verify_backup
from lifeos_backup.storage.offsite.upload import upload_backup
from tests.support.s3 import Bucket
from tests.support.services import PgDatabase, PostgresCluster
from tests.support.trees import make_tree
from tests.support.worker import LifeosEnv

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).with_name("lifeos-backup"))
ANA = "data/characters/item-00000.json"  # one file of make_tree's tree


def cli(env: LifeosEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env=env.subprocess_env(), capture_output=True, text=True, timeout=120
    )


def cli_bytes(env: LifeosEnv, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([CLI, *args], env=env.subprocess_env(), capture_output=True, timeout=120)


def one_error(result: subprocess.CompletedProcess[str]) -> str:
    """An expected failure: exit 1, exactly one `error:` line, no traceback."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def usage_error(result: subprocess.CompletedProcess[str], text: str = "") -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Usage:" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert text in result.stderr, result.stderr


def backup(env: LifeosEnv) -> str:
    settings, catalog = env.settings(), env.catalog()
    backup_id = create_backup("json", settings, catalog).backup_id
    verify_backup(backup_id, settings, catalog)
    return backup_id


@pytest.fixture
def two_backups(lifeos_env: LifeosEnv) -> tuple[str, str]:
    """Two JSON backups: between them ANA changed, item-00003 went, new.json came."""
    make_tree(lifeos_env.app_dir, files=12)
    first = backup(lifeos_env)
    app = lifeos_env.app_dir
    (app / ANA).write_text('{"name": "Ana", "changed": true}\n')
    (app / "data/characters/item-00003.json").unlink()
    (app / "data/characters/new.json").write_text("{}\n")
    time.sleep(1)  # ids are per second
    second = backup(lifeos_env)
    return first, second


def test_ls_lists_files_from_the_manifest(lifeos_env: LifeosEnv, two_backups: tuple) -> None:
    first, _second = two_backups
    archive = lifeos_env.backup_root / "json" / f"{first}.tar.zst"
    archive.rename(archive.with_suffix(".moved"))  # ls never reads the archive
    result = cli(lifeos_env, "ls", first)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("drwx") and line.endswith("  data") for line in lines)
    [ana] = [line for line in lines if line.endswith(ANA)]
    assert re.fullmatch(rf"-rw-r--r-- +\d+ \d{{4}}-\d\d-\d\d \d\d:\d\d  {ANA}", ana), ana
    only = cli(lifeos_env, "ls", first, "data/characters/*.json", "--json")
    assert only.returncode == 0, only.stderr
    entries = json.loads(only.stdout)
    assert {e["path"] for e in entries} == {
        f"data/characters/item-{i:05d}.json" for i in range(0, 12, 3)
    }
    assert all(e["type"] == "file" and len(e["sha256"]) == 64 and e["mtime"] for e in entries)
    one_error(cli(lifeos_env, "ls", first, "data/nothing-here"))
    one_error(cli(lifeos_env, "ls", "json_backup_20000101_000000"))
    one_error(cli(lifeos_env, "ls", "nosuch"))
    usage_error(cli(lifeos_env, "ls", first, "../etc/passwd"), "..")
    usage_error(cli(lifeos_env, "ls", first, "/etc/passwd"), "absolute")
    usage_error(cli(lifeos_env, "ls", first, "data/[abc"), "glob")


def test_find_shows_each_version_newest_first(lifeos_env: LifeosEnv, two_backups: tuple) -> None:
    first, second = two_backups
    result = cli(lifeos_env, "find", ANA, "--json")
    assert result.returncode == 0, result.stderr
    versions = json.loads(result.stdout)
    assert [(v["backup_id"], v["then"]) for v in versions] == [(second, "-"), (first, "changed")]
    assert versions[0]["sha256"] != versions[1]["sha256"]
    gone = json.loads(cli(lifeos_env, "find", "data/**/item-00003.json", "--json").stdout)
    assert [(v["backup_id"], v["then"]) for v in gone] == [(first, "removed")]
    text = cli(lifeos_env, "find", ANA)
    assert text.returncode == 0 and second in text.stdout.splitlines()[1], text.stdout
    assert versions[0]["sha256"][:12] in text.stdout
    one_error(cli(lifeos_env, "find", "data/never.json"))
    none_recent = cli(lifeos_env, "find", ANA, "--since", "2999-01-01")
    one_error(none_recent)
    usage_error(cli(lifeos_env, "find", "../x"), "..")
    usage_error(cli(lifeos_env, "find", ANA, "--since", "yesterday"))
    usage_error(cli(lifeos_env, "find", ANA, "--kind", "basebackup"))


def test_diff_of_two_json_backups(lifeos_env: LifeosEnv, two_backups: tuple) -> None:
    first, second = two_backups
    result = cli(lifeos_env, "diff", first, second, "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    changes = {(c["change"], c["path"]) for c in found["changes"]}
    assert changes == {
        ("changed", ANA),
        ("removed", "data/characters/item-00003.json"),
        ("added", "data/characters/new.json"),
    }
    text = cli(lifeos_env, "diff", first, second)
    assert text.stdout.splitlines()[-1] == "1 added, 1 removed, 1 changed", text.stdout
    assert f"M {ANA}" in text.stdout
    usage_error(cli(lifeos_env, "diff", first, "postgres_full_20260101_000000"), "one kind")
    one_error(cli(lifeos_env, "diff", first, "json_backup_20000101_000000"))


def test_include_restores_selected_files_and_never_overwrites(
    lifeos_env: LifeosEnv, two_backups: tuple, tmp_path: Path
) -> None:
    first, _second = two_backups
    target = tmp_path / "into"
    (target / "data").mkdir(parents=True)
    (target / "keep.txt").write_text("mine")
    result = cli(lifeos_env, "restore", "json", first, "--target", str(target),
                 "--include", "data/characters/item-0000[0-3].json", "--include", "configs")
    assert result.returncode == 0, result.stderr
    restored = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert restored == sorted([
        ANA, "data/characters/item-00003.json", "configs/item-00002.json",
        "configs/item-00005.json", "configs/item-00008.json", "configs/item-00011.json",
        "keep.txt",
    ])
    original = json.loads((target / "data/characters/item-00003.json").read_text())
    assert original["id"] == "id-00003"
    again = cli(lifeos_env, "restore", "json", first, "--target", str(target), "--include", ANA)
    assert "exists" in one_error(again)
    (target / ANA).write_text("edited")
    forced = cli(lifeos_env, "restore", "json", first, "--target", str(target),
                 "--include", ANA, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (target / ANA).read_text() != "edited"
    assert not [p for p in target.iterdir() if p.name.startswith(".lifeos-restore")]
    one_error(cli(lifeos_env, "restore", "json", first, "--target", str(tmp_path / "n"),
                  "--include", "data/none*"))
    assert not (tmp_path / "n").exists()
    usage_error(cli(lifeos_env, "restore", "json", first, "--target", str(target),
                    "--include", "/etc/passwd"), "absolute")
    usage_error(cli(lifeos_env, "restore", "json", first, "--target", str(target),
                    "--include", "data/../../x"), "..")


def test_to_stdout_writes_one_file_and_nothing_else(
    lifeos_env: LifeosEnv, two_backups: tuple
) -> None:
    first, second = two_backups
    before = sorted(os.listdir(lifeos_env.root))
    result = cli_bytes(lifeos_env, "restore", "json", first, "--include", ANA, "--to-stdout")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["id"] == "id-00000"
    newer = cli_bytes(lifeos_env, "restore", "json", second, "--include", ANA, "--to-stdout")
    assert newer.stdout == (lifeos_env.app_dir / ANA).read_bytes()
    assert sorted(os.listdir(lifeos_env.root)) == before
    several = cli(lifeos_env, "restore", "json", first, "--include", "data/*/*", "--to-stdout")
    assert "exactly one" in one_error(several) and several.stdout == ""
    zero = cli(lifeos_env, "restore", "json", first, "--include", "nothing", "--to-stdout")
    one_error(zero)
    usage_error(cli(lifeos_env, "restore", "json", first, "--to-stdout"), "--include")
    usage_error(cli(lifeos_env, "restore", "json", first, "--include", ANA))


def test_tampered_member_is_refused_and_leaves_nothing(
    lifeos_env: LifeosEnv, tmp_path: Path
) -> None:
    make_tree(lifeos_env.app_dir, files=6)
    backup_id = backup(lifeos_env)
    archive = lifeos_env.backup_root / "json" / f"{backup_id}.tar.zst"
    tar = zstandard.ZstdDecompressor().decompressobj().decompress(archive.read_bytes())
    assert tar.count(b'"id-00000"') == 1
    archive.write_bytes(
        zstandard.ZstdCompressor().compress(tar.replace(b'"id-00000"', b'"id-66666"'))
    )
    target = tmp_path / "existing"
    target.mkdir()
    result = cli(lifeos_env, "restore", "json", backup_id, "--target", str(target),
                 "--include", ANA)
    assert ANA in one_error(result)
    assert list(target.iterdir()) == []
    fresh = tmp_path / "fresh"
    one_error(cli(lifeos_env, "restore", "json", backup_id, "--target", str(fresh),
                  "--include", ANA))
    assert not fresh.exists()
    piped = cli(lifeos_env, "restore", "json", backup_id, "--include", ANA, "--to-stdout")
    assert ANA in one_error(piped) and piped.stdout == ""


def test_ls_and_diff_of_postgres_backups(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster, pg_database: PgDatabase
) -> None:
    import psycopg

    lifeos_env.set(LIFEOS_DATABASE_URL=pg_database.url, LIFEOS_PG_BIN_DIR=str(pg_cluster.bindir))
    with psycopg.connect(pg_database.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE characters (id serial PRIMARY KEY, name text)")
        conn.execute("INSERT INTO characters (name) VALUES ('ana'), ('bo')")
    settings, catalog = lifeos_env.settings(), lifeos_env.catalog()
    first = create_backup("postgres", settings, catalog).backup_id
    with psycopg.connect(pg_database.url, autocommit=True) as conn:
        conn.execute("INSERT INTO characters (name) VALUES ('cy')")
        conn.execute("CREATE SCHEMA extra")
        conn.execute("CREATE TABLE extra.notes (id int)")
    time.sleep(1)
    second = create_backup("postgres", settings, catalog).backup_id
    listed = cli(lifeos_env, "ls", first, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(t["table"], t["rows"]) for t in json.loads(listed.stdout)["tables"]] == [
        ("public.characters", 2)
    ]
    text = cli(lifeos_env, "ls", second, "extra.*")
    assert "extra.notes" in text.stdout and "characters" not in text.stdout, text.stdout
    found = json.loads(cli(lifeos_env, "diff", first, second, "--json").stdout)
    assert {(t["change"], t["table"], t["new_rows"]) for t in found["tables"]} == {
        ("changed", "public.characters", 3),
        ("added", "extra.notes", 0),
    }
    assert found["schemas"]["added"] == ["extra"]
    assert "M table public.characters  rows 2 -> 3" in cli(lifeos_env, "diff", first, second).stdout


def test_include_from_offsite_leaves_no_download_behind(
    lifeos_env: LifeosEnv, s3_bucket: Bucket, tmp_path: Path
) -> None:
    make_tree(lifeos_env.app_dir, files=6)
    backup_id = backup(lifeos_env)
    assert upload_backup(backup_id, lifeos_env.settings(), lifeos_env.catalog()) is not None
    state = lifeos_env.backup_root / ".state"
    before = sorted(p.name for p in state.rglob("*")) if state.exists() else []
    target = tmp_path / "from-bucket"
    result = cli(lifeos_env, "restore", "json", backup_id, "--from", "offsite",
                 "--target", str(target), "--include", ANA)
    assert result.returncode == 0, result.stderr
    assert (target / ANA).read_bytes() == (lifeos_env.app_dir / ANA).read_bytes()
    piped = cli_bytes(lifeos_env, "restore", "json", backup_id, "--from", "offsite",
                      "--include", ANA, "--to-stdout")
    assert piped.returncode == 0 and piped.stdout == (lifeos_env.app_dir / ANA).read_bytes()
    after = sorted(p.name for p in state.rglob("*")) if state.exists() else []
    assert [n for n in after if n not in before and not n.startswith("offsite-")] == []
    assert not [p for p in state.rglob("offsite-*")], after


def test_diff_of_postgres_backups_names_schema_objects(
    lifeos_env: LifeosEnv,
    pg_cluster: PostgresCluster,
    pg_database: PgDatabase,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Indexes, functions, views, ... added or removed, read from the archives' heads; an
    encrypted backup without its private key gets a one-line note and the manifests' diff."""
    import psycopg

    from lifeos_backup.core.settings import get_settings
    from lifeos_backup.formats.crypto import generate_identity

    lifeos_env.set(LIFEOS_DATABASE_URL=pg_database.url, LIFEOS_PG_BIN_DIR=str(pg_cluster.bindir))
    with psycopg.connect(pg_database.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE characters (id serial PRIMARY KEY, name text)")
        conn.execute("INSERT INTO characters (name) VALUES ('ana'), ('bo')")
        conn.execute("CREATE VIEW named AS SELECT name FROM characters")
    settings, catalog = lifeos_env.settings(), lifeos_env.catalog()
    first = create_backup("postgres", settings, catalog).backup_id
    with psycopg.connect(pg_database.url, autocommit=True) as conn:
        conn.execute("CREATE INDEX characters_name_idx ON characters (name)")
        conn.execute(
            "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql"
            " AS $$ BEGIN RETURN NEW; END $$"
        )
        conn.execute("DROP VIEW named")
    time.sleep(1)
    second = create_backup("postgres", settings, catalog).backup_id

    text = cli(lifeos_env, "diff", first, second)
    assert text.returncode == 0 and text.stderr == "", text.stderr
    lines = text.stdout.splitlines()
    assert "+ index public.characters_name_idx" in lines, text.stdout
    assert "+ function public.touch()" in lines, text.stdout
    assert "- view public.named" in lines, text.stdout
    assert not [line for line in lines if "characters_pkey" in line]  # in both: no change
    found = json.loads(cli(lifeos_env, "diff", first, second, "--json").stdout)
    assert found["note"] is None
    assert found["objects"] == {
        "added": [
            {"type": "function", "name": "public.touch()"},
            {"type": "index", "name": "public.characters_name_idx"},
        ],
        "removed": [{"type": "view", "name": "public.named"}],
    }
    state = lifeos_env.backup_root / ".state"
    assert not list(state.glob("diff-*"))  # the heads' scratch folders are gone

    identity, recipient = generate_identity()
    key_file = tmp_path / "backup.key"
    key_file.write_text(f"{identity}\n")
    key_file.chmod(0o600)
    monkeypatch.setenv("LIFEOS_ENCRYPTION_RECIPIENTS", recipient)
    lifeos_env.vars["LIFEOS_ENCRYPTION_RECIPIENTS"] = recipient
    get_settings.cache_clear()
    with psycopg.connect(pg_database.url, autocommit=True) as conn:
        conn.execute("CREATE TYPE mood AS ENUM ('ok', 'meh')")
        conn.execute("INSERT INTO characters (name) VALUES ('cy')")
    time.sleep(1)
    third = create_backup("postgres", lifeos_env.settings(), lifeos_env.catalog()).backup_id

    locked = cli(lifeos_env, "diff", second, third)
    assert locked.returncode == 0, locked.stderr
    [note] = locked.stderr.strip().splitlines()
    assert third in note and "encrypted" in note and "LIFEOS_ENCRYPTION_IDENTITY_FILE" in note
    assert "M table public.characters  rows 2 -> 3" in locked.stdout  # the manifests still
    assert "type public.mood" not in locked.stdout
    as_json = json.loads(cli(lifeos_env, "diff", second, third, "--json").stdout)
    assert as_json["objects"] is None and "encrypted" in as_json["note"]

    opened = subprocess.run(
        [CLI, "diff", second, third],
        env=lifeos_env.subprocess_env(LIFEOS_ENCRYPTION_IDENTITY_FILE=str(key_file)),
        capture_output=True, text=True, timeout=120,
    )
    assert opened.returncode == 0 and opened.stderr == "", opened.stderr
    assert "+ type public.mood" in opened.stdout.splitlines(), opened.stdout
