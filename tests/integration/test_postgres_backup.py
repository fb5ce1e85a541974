"""PostgreSQL backups end to end on a real server: worker chain, exact restores, failure modes.

Every test makes its own databases in the session's throwaway cluster and drops them afterwards.
The password tests add one role-specific scram-sha-256 line to that cluster's pg_hba.conf (other
roles keep `trust`) and take it out again at the end of the module.
"""

from __future__ import annotations

import contextlib
import io
import json
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import psycopg
import pytest
import zstandard
from psycopg import sql

from lifeos_backup.backups import create_backup, locate, verify_backup
from lifeos_backup.catalog.store import FAILED, VERIFIED
from lifeos_backup.client import BackupFailed, make_app, request_backup
from lifeos_backup.errors import SourceUnavailable, VerificationFailed
from lifeos_backup.manifest import read_manifest
from lifeos_backup.postgres.restore import restore_postgres
from lifeos_backup.postgres.tools import ToolTooOld
from lifeos_backup.repository import kind_dir
from tests.support.services import PgDatabase, PostgresCluster, temporary_database
from tests.support.worker import LifeosEnv

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).with_name("lifeos-backup"))
ROLE = "lifeos_pw_tester"
PASSWORD = "Pw-" + uuid.uuid4().hex  # unique, so finding it anywhere is a real leak
TABLES = ["characters", "clothing_items", "outfits", "compositions", "board_games", "favorites"]

LIFEOS_SCHEMA = """
CREATE TABLE characters (
    id serial PRIMARY KEY,
    name text NOT NULL,
    bio text,
    traits jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT '2024-01-01 00:00:00+00'
);
CREATE INDEX characters_traits_gin ON characters USING gin (traits);
COMMENT ON TABLE characters IS 'Personnages — ünïcödé comment';
CREATE TABLE clothing_items (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    category text CHECK (category <> ''),
    attributes jsonb,
    price numeric(10, 2)
);
CREATE TABLE outfits (
    id serial PRIMARY KEY,
    character_id int NOT NULL REFERENCES characters (id) ON DELETE CASCADE,
    name text NOT NULL,
    item_ids bigint[] NOT NULL DEFAULT '{}'
);
CREATE TABLE compositions (
    id serial PRIMARY KEY,
    outfit_id int REFERENCES outfits (id),
    layout jsonb,
    notes text
);
CREATE TABLE board_games (
    id serial PRIMARY KEY,
    title text NOT NULL UNIQUE,
    players int4range,
    rules text
);
CREATE TABLE favorites (
    id serial PRIMARY KEY,
    user_id int NOT NULL,
    character_id int REFERENCES characters (id),
    game_id int REFERENCES board_games (id),
    note text
);
CREATE SEQUENCE ticket_numbers START 1000;
SELECT nextval('ticket_numbers') FROM generate_series(1, 7);
CREATE VIEW character_outfits AS
    SELECT c.name AS character, o.name AS outfit FROM characters c JOIN outfits o
    ON o.character_id = c.id;

INSERT INTO characters (name, bio, traits)
SELECT (ARRAY['Zoë', '東京の探偵', 'Ærøskøbing 🎲', 'plain'])[1 + g % 4] || ' ' || g,
       CASE WHEN g % 5 = 0 THEN NULL ELSE 'bio of ' || g || E'\\nwith a newline and a tab\\t' END,
       jsonb_build_object('level', g, 'tags', jsonb_build_array('ü', g % 3), 'none', NULL)
FROM generate_series(1, 300) g;
UPDATE characters SET bio = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 32768) g)
WHERE id = 7;
INSERT INTO clothing_items (name, category, attributes, price)
SELECT 'item ' || g, CASE WHEN g % 4 = 0 THEN NULL ELSE 'cat' || g % 7 END,
       CASE WHEN g % 3 = 0 THEN NULL ELSE jsonb_build_object('colour', 'rouge', 'size', g) END,
       CASE WHEN g % 6 = 0 THEN NULL ELSE g * 1.25 END
FROM generate_series(1, 500) g;
INSERT INTO outfits (character_id, name, item_ids)
SELECT 1 + g % 300, 'outfit «' || g || '»', ARRAY[g, g + 1]::bigint[]
FROM generate_series(1, 400) g;
INSERT INTO compositions (outfit_id, layout, notes)
SELECT CASE WHEN g % 10 = 0 THEN NULL ELSE 1 + g % 400 END,
       jsonb_build_object('grid', jsonb_build_array(g, g * 2)), NULL
FROM generate_series(1, 250) g;
INSERT INTO board_games (title, players, rules)
SELECT 'Jeu ' || g, int4range(1 + g % 3, 4 + g % 5), repeat('règle ', g % 20)
FROM generate_series(1, 60) g;
INSERT INTO favorites (user_id, character_id, game_id, note)
SELECT g % 17, CASE WHEN g % 2 = 0 THEN 1 + g % 300 END, CASE WHEN g % 2 = 1 THEN 1 + g % 60 END,
       NULL
FROM generate_series(1, 200) g;
DELETE FROM favorites WHERE id % 9 = 0;
"""


# ------------------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def lifeos_database(cluster: PostgresCluster) -> Iterator[str]:
    """A database with the Life-OS-like schema and data; dropped afterwards."""
    with temporary_database(cluster, prefix="lifeos_src_") as db:
        with psycopg.connect(db.url, autocommit=True) as conn:
            conn.execute(LIFEOS_SCHEMA)
        yield db.name


@contextlib.contextmanager
def dropped_after(cluster: PostgresCluster, *names: str) -> Iterator[None]:
    try:
        yield
    finally:
        for name in names:
            cluster.drop_database(name)


def scratch_name(label: str) -> str:
    return f"lifeos_{label}_{uuid.uuid4().hex[:8]}"


def use_database(env: LifeosEnv, cluster: PostgresCluster, url: str) -> None:
    env.set(LIFEOS_DATABASE_URL=url, LIFEOS_PG_BIN_DIR=str(cluster.bindir))


def backup_now(env: LifeosEnv) -> str:
    """create + verify with the plain functions (no worker): the backup id."""
    manifest = create_backup("postgres", env.settings(), env.catalog(), reason="test")
    verify_backup(manifest.backup_id, env.settings(), env.catalog())
    return manifest.backup_id


def archive_and_manifest(env: LifeosEnv, backup_id: str):
    _row, archive, mpath = locate(env.settings(), env.catalog(), backup_id)
    return archive, mpath


def folder_contents(env: LifeosEnv) -> list[str]:
    """Every file in the postgres folder, hidden ones included."""
    folder = kind_dir(env.backup_root, "postgres")
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def table_hashes(cluster: PostgresCluster, dbname: str, tables: list[str]) -> dict[str, str]:
    """Ordered content hash of every table (rows as text, sorted)."""
    hashes = {}
    with psycopg.connect(cluster.url(dbname)) as conn:
        for table in tables:
            query = sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
                " FROM {} t"
            ).format(sql.Identifier(table))
            hashes[table] = str(conn.execute(query).fetchone())
    return hashes


def sequence_states(cluster: PostgresCluster, dbname: str) -> dict[str, tuple]:
    with psycopg.connect(cluster.url(dbname)) as conn:
        names = [r[0] for r in conn.execute("SELECT sequencename FROM pg_sequences ORDER BY 1")]
        return {
            name: conn.execute(
                sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(name))
            ).fetchone()
            for name in names
        }


def schema_dump(cluster: PostgresCluster, dbname: str) -> str:
    """pg_dump --schema-only, without the per-run random \\restrict key lines."""
    out = subprocess.run(
        [str(cluster.bindir / "pg_dump"), "--schema-only", "--dbname", cluster.url(dbname)],
        capture_output=True, text=True, check=True,
    ).stdout
    return "\n".join(
        line for line in out.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))
    )


def assert_identical(cluster: PostgresCluster, source: str, restored: str) -> None:
    assert schema_dump(cluster, restored) == schema_dump(cluster, source)
    assert table_hashes(cluster, restored, TABLES) == table_hashes(cluster, source, TABLES)
    assert sequence_states(cluster, restored) == sequence_states(cluster, source)


def cli(env: LifeosEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env=env.subprocess_env(), capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def password_role(pg_cluster: PostgresCluster) -> Iterator[str]:
    """A superuser role that must log in with PASSWORD over TCP (scram-sha-256)."""
    hba = pg_cluster.datadir / "pg_hba.conf"
    original = hba.read_text()
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                sql.Identifier(ROLE), sql.Literal(PASSWORD)
            )
        )
        hba.write_text(f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n" + original)
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield ROLE
    finally:
        hba.write_text(original)
        with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))


def role_url(cluster: PostgresCluster, dbname: str, password: str) -> str:
    return f"postgresql://{ROLE}:{password}@127.0.0.1:{cluster.port}/{dbname}"


@pytest.fixture
def sliced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every table dumped as COPY slices, several per table (for real only tables of 16 MiB
    and more are, in slices of 64 MiB or more): for tests that call the plain functions."""
    from lifeos_backup.postgres import rows

    monkeypatch.setattr(rows, "FLOOR", 0)
    monkeypatch.setattr(rows, "SLICE_MIN", 8192)


def pg_list(cluster: PostgresCluster, archive: Path, part: dict) -> str:
    """`pg_restore --list` of one pg_dump part of an archive."""
    with archive.open("rb") as raw:
        raw.seek(part["offset"])
        data = zstandard.ZstdDecompressor().decompressobj().decompress(raw.read(part["size"]))
    return subprocess.run(
        [str(cluster.bindir / "pg_restore"), "--list"], input=data, capture_output=True,
        check=True,
    ).stdout.decode()


# -------------------------------------------------------------------------------------- tests


def test_worker_backup_with_password_restores_identical(
    lifeos_env: LifeosEnv, start_worker, pg_cluster: PostgresCluster, password_role: str
) -> None:
    restored = scratch_name("restored")
    with lifeos_database(pg_cluster) as source, dropped_after(pg_cluster, restored):
        use_database(lifeos_env, pg_cluster, role_url(pg_cluster, source, PASSWORD))
        worker = start_worker()
        app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
        ref = request_backup("postgres", "test", wait=True, timeout=90, app=app)
        backup_id = ref.backup_id
        assert backup_id and backup_id.startswith("postgres_full_")

        folder = kind_dir(lifeos_env.backup_root, "postgres")
        assert folder_contents(lifeos_env) == [
            f"{backup_id}.dump.zst",
            f"{backup_id}.manifest.json",
        ]
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())
        manifest = read_manifest(folder / f"{backup_id}.manifest.json")
        facts = manifest.facts
        assert manifest.verified_at and manifest.compression.algorithm == "zstd"
        assert facts["server_version_num"] // 10000 == 15 and facts["database"] == source
        rows = {t["name"]: t["rows"] for t in facts["tables"]}
        assert rows == {
            "characters": 300, "clothing_items": 500, "outfits": 400, "compositions": 250,
            "board_games": 60, "favorites": 178,
        }
        assert "public.ticket_numbers" in facts["sequences"] and facts["schemas"] == ["public"]
        assert facts["database_size"] > 1_000_000 and facts["dump_bytes"] > 1_000_000
        [row] = lifeos_env.catalog().list(kind="postgres")
        assert row.status == VERIFIED

        report = restore_postgres(
            folder / f"{backup_id}.dump.zst", manifest, lifeos_env.settings(), restored,
            create=True,
        )
        assert report.differences == [] and len(report.counts) == 6 and report.jobs == 2
        assert_identical(pg_cluster, source, restored)
        assert not any((lifeos_env.backup_root / ".restore").iterdir())  # workspace removed

        worker.stop()
        for place in [
            folder / f"{backup_id}.manifest.json",
            lifeos_env.backup_root / "catalog.sqlite3",
            worker.log_path,
        ]:
            assert PASSWORD.encode() not in place.read_bytes(), place


@pytest.mark.parametrize("jobs", [1, 2])
def test_single_table_restore_of_characters(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster, jobs: int
) -> None:
    scratch = scratch_name("scratch")
    with lifeos_database(pg_cluster) as source, dropped_after(pg_cluster, scratch):
        use_database(lifeos_env, pg_cluster, pg_cluster.url(source))
        backup_id = backup_now(lifeos_env)
        archive, mpath = archive_and_manifest(lifeos_env, backup_id)
        report = restore_postgres(
            archive, read_manifest(mpath), lifeos_env.settings(), scratch,
            create=True, tables=["characters"], jobs=jobs,
        )
        assert report.jobs == jobs
        assert [(c.table, c.expected, c.restored) for c in report.counts] == [
            ("public.characters", 300, 300)
        ]
        with psycopg.connect(pg_cluster.url(scratch)) as conn:
            relations = conn.execute(
                "SELECT relname, relkind FROM pg_class WHERE relnamespace = 'public'::regnamespace"
                " ORDER BY 1"
            ).fetchall()
            next_id = conn.execute("SELECT nextval('characters_id_seq')").fetchone()
        assert relations == [
            ("characters", "r"),
            ("characters_id_seq", "S"),
            ("characters_pkey", "i"),
            ("characters_traits_gin", "i"),
        ]
        assert next_id == (301,)
        hashes = table_hashes(pg_cluster, scratch, ["characters"])
        assert hashes == table_hashes(pg_cluster, source, ["characters"])


def test_corrupted_archive_is_refused_by_verify_and_restore(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster
) -> None:
    target = scratch_name("never")
    with lifeos_database(pg_cluster) as source:
        use_database(lifeos_env, pg_cluster, pg_cluster.url(source))
        backup_id = backup_now(lifeos_env)
    archive, mpath = archive_and_manifest(lifeos_env, backup_id)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))

    with pytest.raises(VerificationFailed, match="checksum"):
        verify_backup(backup_id, lifeos_env.settings(), lifeos_env.catalog())
    row = lifeos_env.catalog().get(backup_id)
    assert row.status == FAILED and "checksum" in (row.error or "")
    with pytest.raises(VerificationFailed, match="checksum"):
        restore_postgres(archive, read_manifest(mpath), lifeos_env.settings(), target, create=True)
    assert not pg_cluster.database_exists(target)


def test_one_part_archive_and_one_from_before_parts_verify_and_restore(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster
) -> None:
    """LIFEOS_DUMP_JOBS=1 writes one part; a manifest without `parts` (written before parts
    existed) means the whole file is one part, and must still verify and restore."""
    from lifeos_backup.manifest import write_manifest

    restored = scratch_name("legacy")
    with lifeos_database(pg_cluster) as source, dropped_after(pg_cluster, restored):
        use_database(lifeos_env, pg_cluster, pg_cluster.url(source))
        lifeos_env.set(LIFEOS_DUMP_JOBS="1")
        backup_id = backup_now(lifeos_env)
        archive, mpath = archive_and_manifest(lifeos_env, backup_id)
        manifest = read_manifest(mpath)
        [part] = manifest.facts["parts"]
        assert part["offset"] == 0 and part["size"] == archive.stat().st_size
        del manifest.facts["parts"]
        write_manifest(mpath, manifest)
        verify_backup(backup_id, lifeos_env.settings(), lifeos_env.catalog())
        report = restore_postgres(
            archive, read_manifest(mpath), lifeos_env.settings(), restored, create=True
        )
        assert report.differences == [] and report.jobs == 2
        assert_identical(pg_cluster, source, restored)


def test_small_and_big_strategies_verify_and_restore_the_same_rows(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Either side of the size thresholds: a small database is one pg_dump part, restored by one
    pg_restore stream (below restore.ONE_STREAM_BELOW) or section by section (above it); tables
    of rows.FLOOR or more are COPY slices. Every way verifies and restores the same rows."""
    from lifeos_backup.postgres import restore, rows

    listed: list[Path] = []
    list_toc = restore.list_toc

    def spy(pg_restore, dump):  # type: ignore[no-untyped-def]
        listed.append(dump)
        return list_toc(pg_restore, dump)

    monkeypatch.setattr(restore, "list_toc", spy)
    one, sections, slices = scratch_name("one"), scratch_name("sections"), scratch_name("slices")
    with lifeos_database(pg_cluster) as source, dropped_after(pg_cluster, one, sections, slices):
        use_database(lifeos_env, pg_cluster, pg_cluster.url(source))
        small_id = backup_now(lifeos_env)
        archive, mpath = archive_and_manifest(lifeos_env, small_id)
        manifest = read_manifest(mpath)
        [part] = manifest.facts["parts"]
        assert "copy" not in part and 0 < part["dump_bytes"] < restore.ONE_STREAM_BELOW

        report = restore_postgres(archive, manifest, lifeos_env.settings(), one, create=True)
        assert report.differences == [] and len(report.counts) == 6
        assert listed == []  # one stream: no head file, no table of contents read first
        assert_identical(pg_cluster, source, one)

        monkeypatch.setattr(restore, "ONE_STREAM_BELOW", 0)  # the same archive, as if bigger
        report = restore_postgres(archive, manifest, lifeos_env.settings(), sections, create=True)
        assert report.differences == [] and len(report.counts) == 6
        assert len(listed) == 1  # section by section, from the head's table of contents
        assert_identical(pg_cluster, source, sections)
        monkeypatch.undo()

        monkeypatch.setattr(rows, "FLOOR", 0)  # every table as big as a sliced one
        monkeypatch.setattr(rows, "SLICE_MIN", 8192)
        big_id = backup_now(lifeos_env)
        archive, mpath = archive_and_manifest(lifeos_env, big_id)
        manifest = read_manifest(mpath)
        assert all("copy" in p for p in manifest.facts["parts"][1:])
        assert len(manifest.facts["parts"]) > len(TABLES)
        report = restore_postgres(archive, manifest, lifeos_env.settings(), slices, create=True)
        assert report.differences == [] and len(report.counts) == 6
        assert_identical(pg_cluster, source, slices)
        statuses = {r.id: r.status for r in lifeos_env.catalog().list(kind="postgres")}
        assert statuses[small_id] == statuses[big_id] == VERIFIED


def test_verify_reads_every_part_not_only_the_checksum(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster, sliced: None
) -> None:
    """A part damaged after hashing (a writer bug, say) is still found: each part is
    decompressed in full and its length compared; parts must tile the archive exactly."""
    import hashlib

    from lifeos_backup.postgres.check import check_dump
    from lifeos_backup.postgres.tools import tool

    with lifeos_database(pg_cluster) as source:
        use_database(lifeos_env, pg_cluster, pg_cluster.url(source))
        backup_id = backup_now(lifeos_env)
    archive, mpath = archive_and_manifest(lifeos_env, backup_id)
    manifest = read_manifest(mpath)
    pg_restore = tool(lifeos_env.settings(), "pg_restore")
    second = manifest.facts["parts"][1]  # a COPY slice
    data = bytearray(archive.read_bytes())
    data[second["offset"] + second["size"] // 2] ^= 0x40
    archive.write_bytes(bytes(data))
    manifest.archive.sha256 = hashlib.sha256(data).hexdigest()
    with pytest.raises(VerificationFailed, match=r"corrupt|decompresses to|after its zstd"):
        check_dump(archive, manifest, pg_restore, lambda _: None)

    manifest = read_manifest(mpath)
    data[second["offset"] + second["size"] // 2] ^= 0x40  # undone
    archive.write_bytes(bytes(data))
    manifest.facts["parts"][1]["dump_bytes"] += 1
    with pytest.raises(VerificationFailed, match="part 1 decompresses to"):
        check_dump(archive, manifest, pg_restore, lambda _: None)
    manifest.facts["parts"][1]["dump_bytes"] -= 1
    manifest.facts["parts"][1]["offset"] += 1
    with pytest.raises(VerificationFailed, match="part 1 is not where the manifest says"):
        check_dump(archive, manifest, pg_restore, lambda _: None)


def test_verify_needs_every_manifest_table_in_the_dump(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster
) -> None:
    with lifeos_database(pg_cluster) as source:
        use_database(lifeos_env, pg_cluster, pg_cluster.url(source))
        backup_id = backup_now(lifeos_env)
    _archive, mpath = archive_and_manifest(lifeos_env, backup_id)
    manifest = json.loads(mpath.read_text())
    manifest["facts"]["tables"].append({"schema": "public", "name": "ghosts", "rows": 1})
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(VerificationFailed, match="lacks tables") as caught:
        verify_backup(backup_id, lifeos_env.settings(), lifeos_env.catalog())
    assert "public.ghosts" in str(caught.value)


def test_unreachable_database_is_retried_then_failed(
    lifeos_env: LifeosEnv, start_worker
) -> None:
    from tests.support.services import free_port

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/lifeos"
    start_worker(LIFEOS_DATABASE_URL=url, LIFEOS_RETRY_MAX="1", LIFEOS_RETRY_BACKOFF_MAX="1")
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    with pytest.raises(BackupFailed, match="unreachable"):
        request_backup("postgres", "test", wait=True, timeout=60, app=app)
    [row] = lifeos_env.catalog().list(kind="postgres")  # one request, one row
    assert row.status == FAILED
    assert row.error.startswith("attempt 2: PostgreSQL is unreachable")
    assert "earlier PostgreSQL is unreachable" in row.error  # the first attempt's reason kept
    runs = [r.state for r in lifeos_env.catalog().task_runs() if r.task_name.endswith("create")]
    assert sorted(runs) == ["failed", "retrying"]
    assert folder_contents(lifeos_env) == []


def test_slices_log_in_with_the_password_from_the_environment(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster, password_role: str, sliced: None
) -> None:
    """psql gets the password as PGPASSWORD, never in its arguments (which `ps` shows)."""
    import lifeos_backup.procs as procs_module

    seen: list[list[str]] = []
    spawn = procs_module.spawn

    def recording(args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(list(args))
        return spawn(args, **kwargs)

    with lifeos_database(pg_cluster) as source, pytest.MonkeyPatch.context() as patch:
        patch.setattr(procs_module, "spawn", recording)
        use_database(lifeos_env, pg_cluster, role_url(pg_cluster, source, PASSWORD))
        backup_id = backup_now(lifeos_env)
    _archive, mpath = archive_and_manifest(lifeos_env, backup_id)
    assert len(read_manifest(mpath).facts["parts"]) > 2
    assert any(Path(args[0]).name == "psql" for args in seen)
    assert not any(PASSWORD in arg for args in seen for arg in args)
    assert PASSWORD not in mpath.read_text()


def test_wrong_password_fails_at_once_without_leaking_it(
    lifeos_env: LifeosEnv, start_worker, pg_cluster: PostgresCluster, password_role: str
) -> None:
    wrong = "Wrong-" + uuid.uuid4().hex
    worker = start_worker(
        LIFEOS_DATABASE_URL=role_url(pg_cluster, "postgres", wrong),
        LIFEOS_PG_BIN_DIR=str(pg_cluster.bindir),
        LIFEOS_RETRY_MAX="1",
        LIFEOS_RETRY_BACKOFF_MAX="1",
    )
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    with pytest.raises(BackupFailed, match="refused the login") as caught:
        request_backup("postgres", "test", wait=True, timeout=60, app=app)
    [row] = lifeos_env.catalog().list(kind="postgres")  # permanent: no retry
    assert row.status == FAILED and "password authentication failed" in (row.error or "")
    assert folder_contents(lifeos_env) == []
    worker.stop()
    assert wrong not in str(caught.value) and wrong not in (row.error or "")
    assert wrong.encode() not in worker.log_path.read_bytes()
    assert wrong.encode() not in (lifeos_env.backup_root / "catalog.sqlite3").read_bytes()


def test_cli_wrong_password_is_one_line_of_text(
    lifeos_env: LifeosEnv, start_worker, pg_cluster: PostgresCluster, password_role: str
) -> None:
    """The CLI never imports the module of the worker's AuthenticationFailed, so Celery hands it
    a stand-in exception; its message still reads as text, not as a Python tuple."""
    wrong = "Wrong-" + uuid.uuid4().hex
    start_worker(
        LIFEOS_DATABASE_URL=role_url(pg_cluster, "postgres", wrong),
        LIFEOS_PG_BIN_DIR=str(pg_cluster.bindir),
        LIFEOS_RETRY_MAX="1",
        LIFEOS_RETRY_BACKOFF_MAX="1",
    )
    result = cli(lifeos_env, "backup", "postgres", "--wait", "--timeout", "60")
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error: backup create failed: PostgreSQL refused the login")
    assert "password authentication failed" in lines[0] and "(hint: check the user" in lines[0]
    assert "('" not in lines[0] and wrong not in result.stdout + result.stderr


def test_pg_dump_older_than_server_is_refused_before_any_file(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    bindir = tmp_path / "old-bin"
    bindir.mkdir()
    fake = bindir / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 14.9'\n")
    fake.chmod(0o755)
    lifeos_env.set(LIFEOS_DATABASE_URL=pg_cluster.url(), LIFEOS_PG_BIN_DIR=str(bindir))
    with pytest.raises(ToolTooOld, match=r"pg_dump 14\.9 is older than the PostgreSQL server 15"):
        create_backup("postgres", lifeos_env.settings(), lifeos_env.catalog())
    assert folder_contents(lifeos_env) == []
    [row] = lifeos_env.catalog().list(kind="postgres")
    assert row.status == FAILED and "14.9" in (row.error or "")


def test_pg_dump_killed_mid_dump_leaves_no_file(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    bindir = tmp_path / "dying-bin"
    bindir.mkdir()
    real = pg_cluster.bindir / "pg_dump"
    wrapper = bindir / "pg_dump"
    wrapper.write_text(
        "#!/bin/bash\n"
        f'if [ "$1" = "--version" ]; then exec {real} --version; fi\n'
        f'{real} "$@" | head -c 300000\n'
        "kill -KILL $$\n"
    )
    wrapper.chmod(0o755)
    with lifeos_database(pg_cluster) as source:
        lifeos_env.set(LIFEOS_DATABASE_URL=pg_cluster.url(source), LIFEOS_PG_BIN_DIR=str(bindir))
        # killed by a signal (an operator, the OOM killer): passing, the task retries it
        with pytest.raises(SourceUnavailable, match="killed by SIGKILL"):
            create_backup("postgres", lifeos_env.settings(), lifeos_env.catalog())
    assert folder_contents(lifeos_env) == []
    [row] = lifeos_env.catalog().list(kind="postgres")
    assert row.status == FAILED and "SIGKILL" in (row.error or "")


def test_cli_restore_refuses_a_database_with_tables_unless_forced(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster
) -> None:
    with lifeos_database(pg_cluster) as source, temporary_database(pg_cluster) as target:
        use_database(lifeos_env, pg_cluster, pg_cluster.url(source))
        backup_id = backup_now(lifeos_env)
        with psycopg.connect(target.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE keep_me (id int)")

        refused = cli(lifeos_env, "restore", "postgres", backup_id, "--database", target.name)
        assert refused.returncode != 0
        assert "Traceback" not in refused.stderr
        assert refused.stderr.strip().count("\n") == 0, refused.stderr
        assert refused.stderr.startswith("error: database") and "already holds 1" in refused.stderr
        with psycopg.connect(target.url) as conn:
            names = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            assert names.fetchall() == [("keep_me",)]

        forced = cli(
            lifeos_env, "restore", "postgres", backup_id, "--database", target.name, "--force"
        )
        assert forced.returncode == 0, forced.stderr
        assert "row counts match the manifest" in forced.stdout
        assert table_hashes(pg_cluster, target.name, TABLES) == table_hashes(
            pg_cluster, source, TABLES
        )


def test_cli_restore_exits_non_zero_on_a_row_count_difference(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster
) -> None:
    target = scratch_name("diff")
    with lifeos_database(pg_cluster) as source, dropped_after(pg_cluster, target):
        use_database(lifeos_env, pg_cluster, pg_cluster.url(source))
        backup_id = backup_now(lifeos_env)
        _archive, mpath = archive_and_manifest(lifeos_env, backup_id)
        manifest = json.loads(mpath.read_text())
        for table in manifest["facts"]["tables"]:
            if table["name"] == "outfits":
                table["rows"] += 1
        mpath.write_text(json.dumps(manifest))

        result = cli(
            lifeos_env, "restore", "postgres", backup_id, "--database", target, "--create",
            "--jobs", "1",
        )
        assert result.returncode == 1, result.stderr
        assert "public.outfits" in result.stdout and "401" in result.stdout
        assert "400" in result.stdout
        assert result.stderr.startswith("error: 1 of 6 restored tables differ")
        assert "Traceback" not in result.stderr


def test_head_is_the_archive_up_to_its_data_and_lists_alike(
    pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    from lifeos_backup.postgres.tochead import copy_head

    pg_dump, pg_restore = (str(pg_cluster.bindir / name) for name in ("pg_dump", "pg_restore"))
    with lifeos_database(pg_cluster) as source:
        whole = subprocess.run(
            [pg_dump, "-Fc", "-Z0", pg_cluster.url(source)], capture_output=True, check=True
        ).stdout
    head = tmp_path / "head.dump"
    with head.open("wb") as out:
        assert copy_head(io.BytesIO(whole), out) is True
    cut = head.read_bytes()
    assert 1000 < len(cut) < len(whole) // 10 and whole.startswith(cut)

    def listing(data: bytes | None, path: Path | None = None) -> list[str]:
        args = [pg_restore, "--list"] + ([str(path)] if path else [])
        out = subprocess.run(args, input=data, capture_output=True, check=True).stdout.decode()
        return [line for line in out.splitlines() if not line.startswith(";")]

    assert listing(None, head) == listing(whole)
    assert any("TABLE DATA public characters" in line for line in listing(None, head))
    # Not an archive this module knows: everything is copied, which pg_restore reads just the same.
    other = io.BytesIO(b"PGDMP" + bytes([1, 99, 0]) + b"rest of it" * 100)
    copied = io.BytesIO()
    assert copy_head(other, copied) is False and copied.getvalue() == other.getvalue()


def test_copy_slices_tile_every_table_and_restore_identical_whole_or_one_table(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster, sliced: None
) -> None:
    restored, scratch = scratch_name("slices"), scratch_name("slice_one")
    with lifeos_database(pg_cluster) as source, dropped_after(pg_cluster, restored, scratch):
        use_database(lifeos_env, pg_cluster, pg_cluster.url(source))
        backup_id = backup_now(lifeos_env)
        archive, mpath = archive_and_manifest(lifeos_env, backup_id)
        manifest = read_manifest(mpath)
        parts = manifest.facts["parts"]
        assert "copy" not in parts[0] and all("copy" in p for p in parts[1:])
        assert parts[-1]["offset"] + parts[-1]["size"] == archive.stat().st_size
        assert sum(p["dump_bytes"] for p in parts) == manifest.facts["dump_bytes"]
        counts = {t["name"]: t["rows"] for t in manifest.facts["tables"]}
        with psycopg.connect(pg_cluster.url(source)) as conn:
            for table in TABLES:  # the slices tile the table's pages and hold all its rows
                pieces = sorted(
                    (p["copy"] for p in parts[1:] if p["copy"]["name"] == table),
                    key=lambda c: c["first_page"],
                )
                assert pieces[0]["first_page"] == 0 and pieces[-1]["end_page"] is None
                assert all(a["end_page"] == b["first_page"] for a, b in pairwise(pieces))
                query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
                [(rows,)] = conn.execute(query).fetchall()
                assert counts[table] == sum(p["rows"] for p in pieces) == rows
        assert max(sum(p["copy"]["name"] == t for p in parts[1:]) for t in TABLES) > 1
        listed = pg_list(pg_cluster, archive, parts[0])  # definitions, no data of its own
        assert "TABLE public characters" in listed and "TABLE DATA" not in listed

        report = restore_postgres(archive, manifest, lifeos_env.settings(), restored, create=True)
        assert report.differences == [] and len(report.counts) == 6
        assert_identical(pg_cluster, source, restored)

        report = restore_postgres(
            archive, manifest, lifeos_env.settings(), scratch, create=True, jobs=1,
            tables=["characters"],
        )
        assert [(c.table, c.restored) for c in report.counts] == [("public.characters", 300)]
        assert table_hashes(pg_cluster, scratch, ["characters"]) == table_hashes(
            pg_cluster, source, ["characters"]
        )
        with psycopg.connect(pg_cluster.url(scratch)) as conn:
            tables = conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        assert tables == [("characters",)]


ODD_TABLE = 'we"ird (t)'
ODD_SCHEMA = """
CREATE TYPE mood AS ENUM ('calm', 'wild');
CREATE TABLE "we""ird (t)" (id int PRIMARY KEY, feeling mood, "na me" text);
CREATE INDEX odd_feeling ON "we""ird (t)" (feeling);
COMMENT ON INDEX odd_feeling IS 'index comment, restored after the index';
INSERT INTO "we""ird (t)"
SELECT g, (ARRAY['calm', 'wild'])[1 + g % 2]::mood,
       CASE WHEN g % 3 = 0 THEN NULL ELSE 'n°' || g END
FROM generate_series(1, 500) g;
"""


def test_slices_are_binary_for_built_in_types_text_for_others_and_both_restore(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster, sliced: None
) -> None:
    """COPY binary needs the same types on both sides: a user type (enum) stays text. psql's
    \\copy must take any quoted name; an index comment follows its early-built index."""
    restored = scratch_name("formats")
    with lifeos_database(pg_cluster) as source, dropped_after(pg_cluster, restored):
        with psycopg.connect(pg_cluster.url(source), autocommit=True) as conn:
            conn.execute(ODD_SCHEMA)
        use_database(lifeos_env, pg_cluster, pg_cluster.url(source))
        backup_id = backup_now(lifeos_env)
        archive, mpath = archive_and_manifest(lifeos_env, backup_id)
        manifest = read_manifest(mpath)
        formats = {
            (p["copy"]["name"], p["copy"]["format"]) for p in manifest.facts["parts"][1:]
        }
        assert formats == {(t, "binary") for t in TABLES} | {(ODD_TABLE, "text")}
        counts = {t["name"]: t["rows"] for t in manifest.facts["tables"]}
        assert counts[ODD_TABLE] == 500 and counts["characters"] == 300

        report = restore_postgres(archive, manifest, lifeos_env.settings(), restored, create=True)
        assert report.differences == [] and len(report.counts) == 7
        assert_identical(pg_cluster, source, restored)
        assert table_hashes(pg_cluster, restored, [ODD_TABLE]) == table_hashes(
            pg_cluster, source, [ODD_TABLE]
        )


PADDED_SCHEMA = r"""
CREATE TABLE codes (
    id int PRIMARY KEY,
    code char(6),
    label character(12),
    loose bpchar,
    tags char(3)[]
);
INSERT INTO codes
SELECT g,
       (ARRAY[NULL, '', ' ', 'é' || g % 10, ' a b', E'x\t', 'c' || g % 1000])[1 + g % 7],
       repeat('x', g % 12),
       'l' || g || repeat(' ', g % 4),
       ARRAY['a', 'bb ', NULL]::char(3)[]
FROM generate_series(1, 700) g;
"""


def padded_bytes(cluster: PostgresCluster, dbname: str) -> str:
    """Every value of `codes` as its stored bytes, the padding of char(n) included."""
    with psycopg.connect(cluster.url(dbname)) as conn:
        row = conn.execute(
            "SELECT count(*), md5(string_agg(concat_ws('|', id, bpcharsend(code),"
            " bpcharsend(label), bpcharsend(loose), tags::text), ',' ORDER BY id)),"
            " sum(octet_length(code)) + sum(octet_length(label)) + sum(octet_length(loose))"
            " FROM codes"
        ).fetchone()
    return str(row)


def test_char_columns_are_dumped_without_their_padding_and_restored_byte_for_byte(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster, sliced: None
) -> None:
    """char(n) pads every value to n characters on input, so a slice leaves the trailing blanks
    out; a bpchar without a length keeps its trailing blanks as data, and arrays stay as they
    are."""
    restored = scratch_name("padded")
    with lifeos_database(pg_cluster) as source, dropped_after(pg_cluster, restored):
        with psycopg.connect(pg_cluster.url(source), autocommit=True) as conn:
            conn.execute(PADDED_SCHEMA)
        use_database(lifeos_env, pg_cluster, pg_cluster.url(source))
        backup_id = backup_now(lifeos_env)
        archive, mpath = archive_and_manifest(lifeos_env, backup_id)
        manifest = read_manifest(mpath)
        trimmed = {
            (p["copy"]["name"], p["copy"]["format"], tuple(p["copy"]["trimmed"]))
            for p in manifest.facts["parts"][1:]
        }
        assert trimmed == {(t, "binary", ()) for t in TABLES} | {
            ("codes", "binary", ("code", "label"))
        }

        report = restore_postgres(archive, manifest, lifeos_env.settings(), restored, create=True)
        assert report.differences == []
        assert padded_bytes(pg_cluster, restored) == padded_bytes(pg_cluster, source)
        assert table_hashes(pg_cluster, restored, ["codes"]) == table_hashes(
            pg_cluster, source, ["codes"]
        )
        assert_identical(pg_cluster, source, restored)


def test_a_slice_that_cannot_load_fails_the_restore_and_drops_what_it_created(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster, sliced: None
) -> None:
    from lifeos_backup.errors import PermanentError

    target = scratch_name("bad_slice")
    with lifeos_database(pg_cluster) as source:
        use_database(lifeos_env, pg_cluster, pg_cluster.url(source))
        backup_id = backup_now(lifeos_env)
        archive, mpath = archive_and_manifest(lifeos_env, backup_id)
        manifest = read_manifest(mpath)
        piece = next(p["copy"] for p in manifest.facts["parts"][1:] if p["copy"]["rows"])
        piece["columns"][-1] = "no_such_column"
        with pytest.raises(PermanentError, match=f"loading the rows of public.{piece['name']}"):
            restore_postgres(archive, manifest, lifeos_env.settings(), target, create=True)
    assert not pg_cluster.database_exists(target)


def vacuum_skipped(url: str, table: str) -> bool:
    """Whether `VACUUM (SKIP_LOCKED)`, autovacuum's way of taking a table, passes it by."""
    notices: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        conn.execute(sql.SQL("VACUUM (SKIP_LOCKED) {}").format(sql.Identifier(table)))
    return any(n.startswith("skipping vacuum") for n in notices)


def test_autovacuum_is_kept_off_a_table_from_its_first_slice_to_its_index_build(
    lifeos_env: LifeosEnv,
    pg_cluster: PostgresCluster,
    sliced: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Slices commit one by one: an autovacuum started on a half-loaded table holds up its index
    build for deadlock_timeout, then is cancelled (docs/decisions.md, session 8)."""
    from lifeos_backup.postgres import restore as restore_module

    restored = scratch_name("guarded")
    seen: list[tuple[str, bool]] = []
    real_copy = restore_module.copy_into

    def copy_then_vacuum(piece, *args):  # type: ignore[no-untyped-def]
        rows = real_copy(piece, *args)
        seen.append((piece.name, vacuum_skipped(pg_cluster.url(restored), piece.name)))
        return rows

    monkeypatch.setattr(restore_module, "copy_into", copy_then_vacuum)
    with lifeos_database(pg_cluster) as source, dropped_after(pg_cluster, restored):
        use_database(lifeos_env, pg_cluster, pg_cluster.url(source))
        archive, mpath = archive_and_manifest(lifeos_env, backup_now(lifeos_env))
        report = restore_postgres(
            archive, read_manifest(mpath), lifeos_env.settings(), restored, create=True
        )
        assert report.differences == []
        assert {name for name, _ in seen} == set(TABLES)
        assert all(skipped for _, skipped in seen), seen
        assert not any(vacuum_skipped(pg_cluster.url(restored), t) for t in TABLES)
        assert_identical(pg_cluster, source, restored)


def test_the_biggest_table_loads_first_and_an_index_build_beside_others_is_one_process(
    lifeos_env: LifeosEnv,
    pg_cluster: PostgresCluster,
    sliced: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The biggest table's load and then its index build are the restore's longest chain; beside
    other jobs a parallel index build would crowd them out (docs/decisions.md, session 9)."""
    from lifeos_backup.postgres import restore as restore_module

    events: list[tuple[str, str]] = []
    real_copy, real_tracked = restore_module.copy_into, restore_module.run_tracked

    def copy(piece, *args):  # type: ignore[no-untyped-def]
        events.append(("copy", piece.name))
        return real_copy(piece, *args)

    def tracked(args, *rest):  # type: ignore[no-untyped-def]
        [dbname] = [a.removeprefix("--dbname=") for a in args if a.startswith("--dbname=")]
        with psycopg.connect(dbname) as conn:  # what the server gives the build's connection
            [(workers,)] = conn.execute("SHOW max_parallel_maintenance_workers").fetchall()
        events.append(("build", workers))
        return real_tracked(args, *rest)

    monkeypatch.setattr(restore_module, "copy_into", copy)
    monkeypatch.setattr(restore_module, "run_tracked", tracked)
    alone, beside = scratch_name("alone"), scratch_name("beside")
    with lifeos_database(pg_cluster) as source, dropped_after(pg_cluster, alone, beside):
        use_database(lifeos_env, pg_cluster, pg_cluster.url(source))
        archive, mpath = archive_and_manifest(lifeos_env, backup_now(lifeos_env))
        manifest = read_manifest(mpath)
        parts = manifest.facts["parts"]
        parts[1:] = parts[:0:-1]  # whatever order the archive lists its slices in
        size: dict[str, int] = {}
        for part in parts[1:]:
            name = part["copy"]["name"]
            size[name] = size.get(name, 0) + part["dump_bytes"]
        by_size = sorted(TABLES, key=lambda t: (-size[t], t))
        assert len(set(size.values())) > 1  # an order to get right

        # One job: each table's slices, biggest first, then its own index build, a parallel
        # one (the server's default: nothing runs beside it).
        report = restore_postgres(
            archive, manifest, lifeos_env.settings(), alone, create=True, jobs=1
        )
        assert report.differences == []
        expected: list[tuple[str, str]] = []
        for table in by_size:
            slices = sum(p["copy"]["name"] == table for p in parts[1:])
            expected += [("copy", table)] * slices + [("build", "2")]
        assert events == expected

        events.clear()
        report = restore_postgres(archive, manifest, lifeos_env.settings(), beside, create=True)
        assert report.differences == []
        assert [name for kind, name in events if kind == "copy"][:2] == [by_size[0]] * 2
        builds = [workers for kind, workers in events if kind == "build"]
        assert len(builds) == len(TABLES) and "0" in builds
        assert_identical(pg_cluster, source, beside)


def test_a_table_already_locked_is_loaded_without_a_guard(pg_database: PgDatabase) -> None:
    """The guard only saves time: a table someone else holds (a manual VACUUM, a LOCK) is
    loaded without it, after LOCK_TIMEOUT, and never blocks the restore."""
    from lifeos_backup.postgres.conninfo import PgTarget
    from lifeos_backup.postgres.vacuumguard import VacuumGuards

    target = PgTarget.parse(pg_database.url)
    with psycopg.connect(pg_database.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE held (id int); CREATE TABLE free (id int)")
    guards = VacuumGuards(target)
    with psycopg.connect(pg_database.url) as other:
        other.execute("LOCK TABLE held IN SHARE UPDATE EXCLUSIVE MODE")
        guards.hold(("public", "held"))  # gives up after LOCK_TIMEOUT instead of waiting
        guards.hold(("public", "free"))
        guards.hold(("public", "free"))  # a second call for a table does nothing
        with psycopg.connect(pg_database.url, autocommit=True) as conn:
            conn.execute("INSERT INTO free VALUES (1)")  # COPY and INSERT pass the guard
            [(guarded,)] = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE relation = 'free'::regclass"
                " AND mode = 'ShareUpdateExclusiveLock' AND granted"
            ).fetchall()
            [(guards_open,)] = conn.execute(  # only `free`'s guard is connected
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND backend_type = 'client backend' AND pid <> ALL(%s)",
                ([other.info.backend_pid, conn.info.backend_pid],),
            ).fetchall()
        assert guarded == 1 and guards_open == 1
    assert vacuum_skipped(pg_database.url, "free")
    guards.release_all()
    assert not vacuum_skipped(pg_database.url, "free")
    assert not vacuum_skipped(pg_database.url, "held")


def test_an_encrypted_archive_with_slices_restores_identical(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster, sliced: None, tmp_path: Path
) -> None:
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    key_file = tmp_path / "backup.key"
    key_file.write_text(str(identity) + "\n")
    key_file.chmod(0o600)
    restored = scratch_name("sealed")
    with lifeos_database(pg_cluster) as source, dropped_after(pg_cluster, restored):
        use_database(lifeos_env, pg_cluster, pg_cluster.url(source))
        lifeos_env.set(
            LIFEOS_ENCRYPTION_RECIPIENTS=str(identity.to_public()),
            LIFEOS_ENCRYPTION_IDENTITY_FILE=str(key_file),
        )
        backup_id = backup_now(lifeos_env)
        archive, mpath = archive_and_manifest(lifeos_env, backup_id)
        manifest = read_manifest(mpath)
        assert archive.name.endswith(".dump.zst.age") and len(manifest.facts["parts"]) > 2
        report = restore_postgres(archive, manifest, lifeos_env.settings(), restored, create=True)
        assert report.differences == []
        assert_identical(pg_cluster, source, restored)


def test_an_archive_of_several_pg_dump_parts_still_verifies_and_restores(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster
) -> None:
    """Archives written before COPY slices had the big tables' data in `--data-only` pg_dump
    parts: rebuilt here by hand, they must verify and restore as before."""
    import hashlib

    from lifeos_backup.manifest import write_manifest

    restored, scratch = scratch_name("pg_dump_parts"), scratch_name("pg_dump_part_one")
    with lifeos_database(pg_cluster) as source, dropped_after(pg_cluster, restored, scratch):
        use_database(lifeos_env, pg_cluster, pg_cluster.url(source))
        backup_id = backup_now(lifeos_env)
        archive, mpath = archive_and_manifest(lifeos_env, backup_id)
        base = [str(pg_cluster.bindir / "pg_dump"), "-Fc", "-Z0", pg_cluster.url(source)]
        part_args = [
            ["--exclude-table-data=characters", "--exclude-table-data=outfits"],
            ["--data-only", "--table=characters", "--table=outfits"],
        ]
        dumps = [
            subprocess.run([*base, *args], capture_output=True, check=True).stdout
            for args in part_args
        ]
        packed = [zstandard.ZstdCompressor(write_checksum=True).compress(d) for d in dumps]
        manifest = read_manifest(mpath)
        manifest.facts["parts"] = [
            {"offset": 0, "size": len(packed[0]), "dump_bytes": len(dumps[0]), "tables": []},
            {"offset": len(packed[0]), "size": len(packed[1]), "dump_bytes": len(dumps[1]),
             "tables": ["public.characters", "public.outfits"]},
        ]
        data = b"".join(packed)
        archive.write_bytes(data)
        manifest.archive.size, manifest.archive.sha256 = len(data), hashlib.sha256(data).hexdigest()
        write_manifest(mpath, manifest)
        verify_backup(backup_id, lifeos_env.settings(), lifeos_env.catalog())
        report = restore_postgres(archive, manifest, lifeos_env.settings(), restored, create=True)
        assert report.differences == []
        assert_identical(pg_cluster, source, restored)
        report = restore_postgres(  # its data is in part 1: found from that part's head
            archive, manifest, lifeos_env.settings(), scratch, create=True, tables=["characters"]
        )
        assert [(c.table, c.restored) for c in report.counts] == [("public.characters", 300)]
        assert table_hashes(pg_cluster, scratch, ["characters"]) == table_hashes(
            pg_cluster, source, ["characters"]
        )


def test_a_psql_that_does_not_report_its_rows_fails_the_backup_without_a_file(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster, sliced: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The manifest's row counts are the server's; with none reported there is no backup."""
    from lifeos_backup.errors import PermanentError
    from lifeos_backup.postgres import dump, rows

    def silent(*args, **kwargs) -> list[str]:
        argv = rows.dump_args(*args, **kwargs)
        at = next(i for i, a in enumerate(argv) if a.startswith("\\warn"))
        return argv[: at - 1] + argv[at + 1 :]  # without that `-c \\warn ...`

    monkeypatch.setattr(dump, "slice_args", silent)
    with lifeos_database(pg_cluster) as source:
        use_database(lifeos_env, pg_cluster, pg_cluster.url(source))
        with pytest.raises(PermanentError, match="did not report the rows"):
            create_backup("postgres", lifeos_env.settings(), lifeos_env.catalog(), reason="t")
    assert [r.status for r in lifeos_env.catalog().list(kind="postgres")] == [FAILED]
    assert folder_contents(lifeos_env) == []


def test_a_table_locked_away_makes_the_backup_wait_then_retry(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster, sliced: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A migration holding a table (ACCESS EXCLUSIVE) past the lock wait: a retryable failure
    naming the cause, no file."""
    import lifeos_backup.postgres.dump as dump_module
    from lifeos_backup.errors import SourceUnavailable

    monkeypatch.setattr(dump_module, "LOCK_WAIT", "1s")
    with lifeos_database(pg_cluster) as source:
        use_database(lifeos_env, pg_cluster, pg_cluster.url(source))
        with psycopg.connect(pg_cluster.url(source)) as migration:
            migration.execute("LOCK TABLE characters IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(SourceUnavailable, match="could not lock the tables"):
                create_backup("postgres", lifeos_env.settings(), lifeos_env.catalog())
    assert folder_contents(lifeos_env) == []
    [row] = lifeos_env.catalog().list(kind="postgres")
    assert row.status == FAILED and "lock" in (row.error or "")


def test_disk_full_during_the_dump_removes_the_partial_file(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import lifeos_backup.postgres.dump as dump_module
    from lifeos_backup.postgres.dump import DiskFull
    from lifeos_backup.streams import HashingWriter

    class FillsUp(HashingWriter):
        """The disk is full once 100 kB of the archive are written."""

        def write(self, data: bytes) -> int:
            if self.size + len(data) > 100_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    monkeypatch.setattr(dump_module, "HashingWriter", FillsUp)
    with lifeos_database(pg_cluster) as source:
        use_database(lifeos_env, pg_cluster, pg_cluster.url(source))
        with pytest.raises(DiskFull, match="the backup disk is full"):
            create_backup("postgres", lifeos_env.settings(), lifeos_env.catalog())
    assert folder_contents(lifeos_env) == []
    [row] = lifeos_env.catalog().list(kind="postgres")
    assert row.status == FAILED and "No space left on device" in (row.error or "")
