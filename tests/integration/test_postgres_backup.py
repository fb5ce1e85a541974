"""PostgreSQL backups end to end on a real server: worker chain, exact restores, failure modes.

The tests share one source database with the Life-OS-like schema and data (`source`, made once
for the module and only ever read); a test that needs a different source makes its own
(`own_source`). Tests that only read a backup share one made once for the module
(`shared_backup`, `shared_sliced_backup`); a test that damages a backup or needs it in its
catalog makes its own (`backup`). Every database a test restores into comes from `new_database`
and is dropped after the test. The password tests add one role-specific scram-sha-256 line to the
cluster's pg_hba.conf (other roles keep `trust`) and take it out again at the end of the module.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import psycopg
import pytest
import zstandard
from psycopg import sql

from lifeos_backup.app.client import BackupFailed, make_app, request_backup
from lifeos_backup.core.errors import PermanentError, SourceUnavailable, VerificationFailed
from lifeos_backup.formats.manifest import Manifest, read_manifest, write_manifest
from lifeos_backup.jobs.backups import create_backup, locate, verify_backup
from lifeos_backup.kinds.postgres.restore import restore_postgres
from lifeos_backup.kinds.postgres.tools import ToolTooOld
from lifeos_backup.storage.catalog.store import FAILED, VERIFIED
from lifeos_backup.storage.repository import kind_dir
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
CREATE INDEX characters_name_idx ON characters (name);  -- before the GIN index in the archive
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


def use_database(env: LifeosEnv, cluster: PostgresCluster, url: str) -> None:
    env.set(LIFEOS_DATABASE_URL=url, LIFEOS_PG_BIN_DIR=str(cluster.bindir))


@dataclass
class Backup:
    """A verified backup of the test's configured database: its id, archive and manifest file."""

    id: str
    archive: Path
    manifest_path: Path

    def manifest(self) -> Manifest:
        return read_manifest(self.manifest_path)


def backup_now(env: LifeosEnv) -> Backup:
    """create + verify with the plain functions (no worker)."""
    manifest = create_backup("postgres", env.settings(), env.catalog(), reason="test")
    verify_backup(manifest.backup_id, env.settings(), env.catalog())
    _row, archive, mpath = locate(env.settings(), env.catalog(), manifest.backup_id)
    return Backup(manifest.backup_id, archive, mpath)


def restore(
    env: LifeosEnv, backup: Backup, target: str, manifest: Manifest | None = None, **options
):
    """restore_postgres of `backup` into a new database `target` (its manifest unless given)."""
    chosen = manifest if manifest is not None else backup.manifest()
    return restore_postgres(backup.archive, chosen, env.settings(), target, create=True, **options)


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
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return "\n".join(
        line for line in out.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))
    )


def assert_identical(cluster: PostgresCluster, source: str, restored: str) -> None:
    assert schema_dump(cluster, restored) == schema_dump(cluster, source)
    assert table_hashes(cluster, restored, TABLES) == table_hashes(cluster, source, TABLES)
    assert sequence_states(cluster, restored) == sequence_states(cluster, source)


def public_tables(cluster: PostgresCluster, dbname: str) -> list[tuple[str]]:
    with psycopg.connect(cluster.url(dbname)) as conn:
        query = "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        return conn.execute(query).fetchall()


def cli(env: LifeosEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env=env.subprocess_env(), capture_output=True, text=True, timeout=120
    )


def role_url(cluster: PostgresCluster, dbname: str, password: str) -> str:
    return f"postgresql://{ROLE}:{password}@127.0.0.1:{cluster.port}/{dbname}"


def pg_list(cluster: PostgresCluster, archive: Path, part: dict) -> str:
    """`pg_restore --list` of one pg_dump part of an archive."""
    with archive.open("rb") as raw:
        raw.seek(part["offset"])
        data = zstandard.ZstdDecompressor().decompressobj().decompress(raw.read(part["size"]))
    return subprocess.run(
        [str(cluster.bindir / "pg_restore"), "--list"],
        input=data,
        capture_output=True,
        check=True,
    ).stdout.decode()


def vacuum_skipped(url: str, table: str) -> bool:
    """Whether `VACUUM (SKIP_LOCKED)`, autovacuum's way of taking a table, passes it by."""
    notices: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        conn.execute(sql.SQL("VACUUM (SKIP_LOCKED) {}").format(sql.Identifier(table)))
    return any(n.startswith("skipping vacuum") for n in notices)


def flip_bit(path: Path, at: int, mask: int) -> bytes:
    """XOR one byte of `path` with `mask` in place; the new contents."""
    data = bytearray(path.read_bytes())
    data[at] ^= mask
    path.write_bytes(bytes(data))
    return bytes(data)


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def source(pg_cluster: PostgresCluster) -> Iterator[str]:
    """The Life-OS-like database, made once for the module: building it is the slow part of a
    test, and no test writes to it (one that needs other tables uses `own_source`)."""
    with lifeos_database(pg_cluster) as name:
        yield name


@pytest.fixture
def source_env(lifeos_env: LifeosEnv, pg_cluster: PostgresCluster, source: str) -> LifeosEnv:
    """The test's environment, its database URL pointing at `source` (no password)."""
    use_database(lifeos_env, pg_cluster, pg_cluster.url(source))
    return lifeos_env


@pytest.fixture
def own_source(lifeos_env: LifeosEnv, pg_cluster: PostgresCluster) -> Iterator[str]:
    """A Life-OS-like database of the test's own, which it may add tables to; the test's
    environment points at it. Dropped after the test."""
    with lifeos_database(pg_cluster) as name:
        use_database(lifeos_env, pg_cluster, pg_cluster.url(name))
        yield name


@pytest.fixture
def sliced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every table dumped as COPY slices, several per table (for real only tables of 16 MiB
    and more are, in slices of 64 MiB or more): for tests that call the plain functions."""
    from lifeos_backup.kinds.postgres import rows

    monkeypatch.setattr(rows, "FLOOR", 0)
    monkeypatch.setattr(rows, "SLICE_MIN", 8192)


@pytest.fixture
def backup(source_env: LifeosEnv) -> Backup:
    """A verified backup of `source` in the test's own backup root and catalog, as production
    writes it (small tables stay in pg_dump's part): for tests that damage it or use the CLI."""
    return backup_now(source_env)


def module_backup(cluster: PostgresCluster, source: str, root: Path, *, sliced: bool) -> Backup:
    """A verified backup of `source` in a backup root of its own, made outside any test's
    environment (which is left as it was)."""
    from lifeos_backup.core.fsutil import private_dir
    from lifeos_backup.core.settings import get_settings
    from lifeos_backup.kinds.postgres import rows

    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("LIFEOS_")]:
            patch.delenv(key)
        patch.setenv("LIFEOS_BACKUP_ROOT", str(private_dir(root / "backups")))
        patch.setenv("LIFEOS_APP_DIR", str(root))
        patch.setenv("LIFEOS_DATABASE_URL", cluster.url(source))
        patch.setenv("LIFEOS_PG_BIN_DIR", str(cluster.bindir))
        if sliced:  # as the `sliced` fixture does
            patch.setattr(rows, "FLOOR", 0)
            patch.setattr(rows, "SLICE_MIN", 8192)
        get_settings.cache_clear()
        try:
            return backup_now(LifeosEnv(root))
        finally:
            get_settings.cache_clear()


@pytest.fixture(scope="module")
def shared_backup(
    pg_cluster: PostgresCluster, source: str, tmp_path_factory: pytest.TempPathFactory
) -> Backup:
    """A backup of `source` as production writes it, made once for the module: for tests that
    only read it (restore and check_dump read the archive and a manifest, never the catalog).
    Never change its files: change the copy `.manifest()` returns instead."""
    return module_backup(pg_cluster, source, tmp_path_factory.mktemp("plain"), sliced=False)


@pytest.fixture(scope="module")
def shared_sliced_backup(
    pg_cluster: PostgresCluster, source: str, tmp_path_factory: pytest.TempPathFactory
) -> Backup:
    """As `shared_backup`, with every table in COPY slices (see `sliced`)."""
    return module_backup(pg_cluster, source, tmp_path_factory.mktemp("sliced"), sliced=True)


@pytest.fixture
def new_database(pg_cluster: PostgresCluster) -> Iterator[Callable[[str], str]]:
    """Factory: the name of a database a test restores into (not created yet); every name
    handed out is dropped after the test, whether the restore created it or not."""
    names: list[str] = []

    def new(label: str) -> str:
        names.append(f"lifeos_{label}_{uuid.uuid4().hex[:8]}")
        return names[-1]

    yield new
    for name in names:
        pg_cluster.drop_database(name)


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


@pytest.fixture
def wrong_password_worker(start_worker, pg_cluster: PostgresCluster, password_role: str):
    """A worker whose database URL has the role with a wrong password (one retry at most);
    yields the worker and that password."""
    wrong = "Wrong-" + uuid.uuid4().hex
    worker = start_worker(
        LIFEOS_DATABASE_URL=role_url(pg_cluster, "postgres", wrong),
        LIFEOS_PG_BIN_DIR=str(pg_cluster.bindir),
        LIFEOS_RETRY_MAX="1",
        LIFEOS_RETRY_BACKOFF_MAX="1",
    )
    return worker, wrong


@pytest.fixture
def fake_bin(tmp_path: Path) -> Callable[[str], Path]:
    """Factory: write an executable `pg_dump` script into a fresh directory; the directory."""

    def write(script: str) -> Path:
        bindir = tmp_path / f"bin-{uuid.uuid4().hex[:6]}"
        bindir.mkdir()
        (bindir / "pg_dump").write_text(script)
        (bindir / "pg_dump").chmod(0o755)
        return bindir

    return write


# ------------------------------------------------------------------ the worker chain, end to end


def test_a_worker_backup_over_a_password_login_restores_identical_and_leaks_no_password(
    lifeos_env: LifeosEnv,
    start_worker,
    pg_cluster: PostgresCluster,
    password_role: str,
    source: str,
    new_database: Callable[[str], str],
) -> None:
    """The production path in one run (a worker chain is the slow part, so one test reads it
    all): two private files, a manifest with the server's facts, a verified catalog row, an
    identical restore with its workspace removed, and the password in no file and no log."""
    restored = new_database("restored")
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
        "characters": 300,
        "clothing_items": 500,
        "outfits": 400,
        "compositions": 250,
        "board_games": 60,
        "favorites": 178,
    }
    assert "public.ticket_numbers" in facts["sequences"] and facts["schemas"] == ["public"]
    assert facts["database_size"] > 1_000_000 and facts["dump_bytes"] > 1_000_000
    [row] = lifeos_env.catalog().list(kind="postgres")
    assert row.status == VERIFIED

    report = restore_postgres(
        folder / f"{backup_id}.dump.zst",
        manifest,
        lifeos_env.settings(),
        restored,
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


def test_an_unreachable_database_is_retried_once_then_one_failed_row(
    lifeos_env: LifeosEnv, start_worker
) -> None:
    """A server that does not answer may come back: the task retries, and the catalog keeps one
    row for the one request, with both attempts' reasons."""
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


def test_a_wrong_password_fails_at_once_without_leaking_it(
    lifeos_env: LifeosEnv, wrong_password_worker
) -> None:
    """A refused login will not pass by itself: no retry, and the password it was given
    appears in no error, no log and no catalog."""
    worker, wrong = wrong_password_worker
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


def test_the_cli_reports_a_wrong_password_as_one_line_of_text(
    lifeos_env: LifeosEnv, wrong_password_worker
) -> None:
    """The CLI never imports the module of the worker's AuthenticationFailed, so Celery hands it
    a stand-in exception; its message still reads as text, not as a Python tuple."""
    _worker, wrong = wrong_password_worker
    result = cli(lifeos_env, "backup", "postgres", "--wait", "--timeout", "60")
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error: backup create failed: PostgreSQL refused the login")
    assert "password authentication failed" in lines[0] and "(hint: check the user" in lines[0]
    assert "('" not in lines[0] and wrong not in result.stdout + result.stderr


def test_slices_log_in_with_the_password_from_the_environment(
    lifeos_env: LifeosEnv,
    pg_cluster: PostgresCluster,
    password_role: str,
    source: str,
    sliced: None,
) -> None:
    """psql gets the password as PGPASSWORD, never in its arguments (which `ps` shows)."""
    import lifeos_backup.core.procs as procs_module

    seen: list[list[str]] = []
    spawn = procs_module.spawn

    def recording(args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(list(args))
        return spawn(args, **kwargs)

    use_database(lifeos_env, pg_cluster, role_url(pg_cluster, source, PASSWORD))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(procs_module, "spawn", recording)
        backup = backup_now(lifeos_env)
    assert len(backup.manifest().facts["parts"]) > 2
    assert any(Path(args[0]).name == "psql" for args in seen)
    assert not any(PASSWORD in arg for args in seen for arg in args)
    assert PASSWORD not in backup.manifest_path.read_text()


# -------------------------------------------------------------------------------- restores


@pytest.mark.parametrize("jobs", [1, 2])
def test_one_table_restores_alone_with_its_sequence_and_indexes(
    source_env: LifeosEnv,
    pg_cluster: PostgresCluster,
    source: str,
    shared_backup: Backup,
    new_database: Callable[[str], str],
    jobs: int,
) -> None:
    """`--table` brings the table with what belongs to it (its sequence at the right value, its
    indexes) and nothing else, with one job or several."""
    scratch = new_database("scratch")
    report = restore(source_env, shared_backup, scratch, tables=["characters"], jobs=jobs)
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
        ("characters_name_idx", "i"),
        ("characters_pkey", "i"),
        ("characters_traits_gin", "i"),
    ]
    assert next_id == (301,)
    hashes = table_hashes(pg_cluster, scratch, ["characters"])
    assert hashes == table_hashes(pg_cluster, source, ["characters"])


def test_the_cli_refuses_a_database_with_tables_unless_forced(
    source_env: LifeosEnv, pg_cluster: PostgresCluster, source: str, backup: Backup
) -> None:
    """Restoring over someone's tables must be a decision: refused in one line, the tables left
    as they are; with --force the restore goes ahead."""
    with temporary_database(pg_cluster) as target:
        with psycopg.connect(target.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE keep_me (id int)")

        refused = cli(source_env, "restore", "postgres", backup.id, "--database", target.name)
        assert refused.returncode != 0
        assert "Traceback" not in refused.stderr
        assert refused.stderr.strip().count("\n") == 0, refused.stderr
        assert refused.stderr.startswith("error: database") and "already holds 1" in refused.stderr
        assert public_tables(pg_cluster, target.name) == [("keep_me",)]

        forced = cli(
            source_env, "restore", "postgres", backup.id, "--database", target.name, "--force"
        )
        assert forced.returncode == 0, forced.stderr
        assert "row counts match the manifest" in forced.stdout
        assert table_hashes(pg_cluster, target.name, TABLES) == table_hashes(
            pg_cluster, source, TABLES
        )


def test_the_cli_exits_non_zero_on_a_row_count_difference(
    source_env: LifeosEnv, backup: Backup, new_database: Callable[[str], str]
) -> None:
    """A restore whose row counts differ from the manifest's is not a success, even though every
    step ran: exit 1, the table and both counts on stdout, one error line."""
    target = new_database("diff")
    manifest = json.loads(backup.manifest_path.read_text())
    for table in manifest["facts"]["tables"]:
        if table["name"] == "outfits":
            table["rows"] += 1
    backup.manifest_path.write_text(json.dumps(manifest))

    result = cli(
        source_env,
        "restore",
        "postgres",
        backup.id,
        "--database",
        target,
        "--create",
        "--jobs",
        "1",
    )
    assert result.returncode == 1, result.stderr
    assert "public.outfits" in result.stdout and "401" in result.stdout
    assert "400" in result.stdout
    assert result.stderr.startswith("error: 1 of 6 restored tables differ")
    assert "Traceback" not in result.stderr


def test_an_encrypted_archive_with_slices_restores_identical(
    source_env: LifeosEnv,
    pg_cluster: PostgresCluster,
    source: str,
    sliced: None,
    tmp_path: Path,
    new_database: Callable[[str], str],
) -> None:
    """Encryption wraps the whole archive: the parts' offsets still find every slice."""
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    key_file = tmp_path / "backup.key"
    key_file.write_text(str(identity) + "\n")
    key_file.chmod(0o600)
    restored = new_database("sealed")
    source_env.set(
        LIFEOS_ENCRYPTION_RECIPIENTS=str(identity.to_public()),
        LIFEOS_ENCRYPTION_IDENTITY_FILE=str(key_file),
    )
    backup = backup_now(source_env)
    assert backup.archive.name.endswith(".dump.zst.age")
    assert len(backup.manifest().facts["parts"]) > 2
    report = restore(source_env, backup, restored)
    assert report.differences == []
    assert_identical(pg_cluster, source, restored)


# ------------------------------------------------------------------------ verify and damage


def test_a_corrupted_archive_fails_verify_and_marks_the_backup_failed(
    source_env: LifeosEnv, backup: Backup
) -> None:
    """One flipped bit is enough: the checksum is checked before anything else."""
    flip_bit(backup.archive, backup.archive.stat().st_size // 2, 0x01)
    with pytest.raises(VerificationFailed, match="checksum"):
        verify_backup(backup.id, source_env.settings(), source_env.catalog())
    row = source_env.catalog().get(backup.id)
    assert row.status == FAILED and "checksum" in (row.error or "")


def test_a_corrupted_archive_is_refused_by_restore_before_any_database(
    source_env: LifeosEnv,
    pg_cluster: PostgresCluster,
    backup: Backup,
    new_database: Callable[[str], str],
) -> None:
    """Restore checks the archive before it creates the target, so a damaged archive leaves no
    half-restored database behind."""
    target = new_database("never")
    flip_bit(backup.archive, backup.archive.stat().st_size // 2, 0x01)
    with pytest.raises(VerificationFailed, match="checksum"):
        restore(source_env, backup, target)
    assert not pg_cluster.database_exists(target)


def test_verify_needs_every_manifest_table_in_the_dump(
    source_env: LifeosEnv, backup: Backup
) -> None:
    """The manifest promises tables; a dump that lacks one fails verify, naming it."""
    manifest = json.loads(backup.manifest_path.read_text())
    manifest["facts"]["tables"].append({"schema": "public", "name": "ghosts", "rows": 1})
    backup.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(VerificationFailed, match="lacks tables") as caught:
        verify_backup(backup.id, source_env.settings(), source_env.catalog())
    assert "public.ghosts" in str(caught.value)


def check_dump_of(env: LifeosEnv, backup: Backup, manifest: Manifest) -> None:
    from lifeos_backup.kinds.postgres.check import check_dump
    from lifeos_backup.kinds.postgres.tools import tool

    check_dump(backup.archive, manifest, tool(env.settings(), "pg_restore"), lambda _: None)


def test_verify_decompresses_every_part_not_only_the_checksum(
    source_env: LifeosEnv, sliced: None
) -> None:
    """A part damaged after hashing (a writer bug, say) is still found: the checksum matches,
    yet the part is decompressed in full and found corrupt."""
    backup = backup_now(source_env)
    manifest = backup.manifest()
    second = manifest.facts["parts"][1]  # a COPY slice
    data = flip_bit(backup.archive, second["offset"] + second["size"] // 2, 0x40)
    manifest.archive.sha256 = hashlib.sha256(data).hexdigest()
    with pytest.raises(VerificationFailed, match=r"corrupt|decompresses to|after its zstd"):
        check_dump_of(source_env, backup, manifest)


def test_verify_compares_each_part_with_its_length_in_the_manifest(
    source_env: LifeosEnv, shared_sliced_backup: Backup
) -> None:
    """A part that decompresses cleanly but to another length than the manifest says is not
    the part the manifest describes."""
    manifest = shared_sliced_backup.manifest()
    manifest.facts["parts"][1]["dump_bytes"] += 1
    with pytest.raises(VerificationFailed, match="part 1 decompresses to"):
        check_dump_of(source_env, shared_sliced_backup, manifest)


def test_verify_needs_the_parts_to_tile_the_archive_exactly(
    source_env: LifeosEnv, shared_sliced_backup: Backup
) -> None:
    """Restore seeks to each part's offset: a part that is not where the manifest says fails
    verify rather than a later restore."""
    manifest = shared_sliced_backup.manifest()
    manifest.facts["parts"][1]["offset"] += 1
    with pytest.raises(VerificationFailed, match="part 1 is not where the manifest says"):
        check_dump_of(source_env, shared_sliced_backup, manifest)


# ----------------------------------------------------------------- archive layouts and parts


def test_one_dump_job_writes_one_part_that_is_the_whole_archive(source_env: LifeosEnv) -> None:
    """LIFEOS_DUMP_JOBS=1 writes the archive as one pg_dump part."""
    source_env.set(LIFEOS_DUMP_JOBS="1")
    backup = backup_now(source_env)
    [part] = backup.manifest().facts["parts"]
    assert part["offset"] == 0 and part["size"] == backup.archive.stat().st_size


def test_a_manifest_from_before_parts_verifies_and_restores(
    source_env: LifeosEnv,
    pg_cluster: PostgresCluster,
    source: str,
    new_database: Callable[[str], str],
) -> None:
    """A manifest without `parts` (written before parts existed) means the whole file is one
    part; such backups must still verify and restore."""
    restored = new_database("legacy")
    source_env.set(LIFEOS_DUMP_JOBS="1")
    backup = backup_now(source_env)
    manifest = backup.manifest()
    del manifest.facts["parts"]
    write_manifest(backup.manifest_path, manifest)
    verify_backup(backup.id, source_env.settings(), source_env.catalog())
    report = restore(source_env, backup, restored)
    assert report.differences == [] and report.jobs == 2
    assert_identical(pg_cluster, source, restored)


def test_a_small_one_part_archive_restores_by_one_stream_or_by_sections_alike(
    source_env: LifeosEnv,
    pg_cluster: PostgresCluster,
    source: str,
    shared_backup: Backup,
    new_database: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Below ONE_STREAM_BELOW a whole restore of a one-part archive is one pg_restore stream
    (no head file, no table of contents read first); above it the sections run one by one.
    Both give the source's database."""
    from lifeos_backup.kinds.postgres import restore as restorer

    listed: list[Path] = []
    list_toc = restorer.list_toc

    def spy(pg_restore, dump):  # type: ignore[no-untyped-def]
        listed.append(dump)
        return list_toc(pg_restore, dump)

    monkeypatch.setattr(restorer, "list_toc", spy)
    [part] = shared_backup.manifest().facts["parts"]
    assert "copy" not in part and 0 < part["dump_bytes"] < restorer.ONE_STREAM_BELOW

    one, sections = new_database("one"), new_database("sections")
    report = restore(source_env, shared_backup, one)
    assert report.differences == [] and len(report.counts) == 6
    assert listed == []
    assert_identical(pg_cluster, source, one)

    monkeypatch.setattr(restorer, "ONE_STREAM_BELOW", 0)  # the same archive, as if bigger
    report = restore(source_env, shared_backup, sections)
    assert report.differences == [] and len(report.counts) == 6
    assert len(listed) == 1
    assert_identical(pg_cluster, source, sections)


@pytest.fixture
def pg_dump_parts_backup(source_env: LifeosEnv, pg_cluster: PostgresCluster, source: str) -> Backup:
    """A backup rewritten by hand the way archives were before COPY slices: the big tables'
    data in a `--data-only` pg_dump part after the part with everything else."""
    backup = backup_now(source_env)
    base = [str(pg_cluster.bindir / "pg_dump"), "-Fc", "-Z0", pg_cluster.url(source)]
    part_args = [
        ["--exclude-table-data=characters", "--exclude-table-data=outfits"],
        ["--data-only", "--table=characters", "--table=outfits"],
    ]
    dumps = [
        subprocess.run([*base, *args], capture_output=True, check=True).stdout for args in part_args
    ]
    packed = [zstandard.ZstdCompressor(write_checksum=True).compress(d) for d in dumps]
    manifest = backup.manifest()
    manifest.facts["parts"] = [
        {"offset": 0, "size": len(packed[0]), "dump_bytes": len(dumps[0]), "tables": []},
        {
            "offset": len(packed[0]),
            "size": len(packed[1]),
            "dump_bytes": len(dumps[1]),
            "tables": ["public.characters", "public.outfits"],
        },
    ]
    data = b"".join(packed)
    backup.archive.write_bytes(data)
    manifest.archive.size, manifest.archive.sha256 = len(data), hashlib.sha256(data).hexdigest()
    write_manifest(backup.manifest_path, manifest)
    return backup


def test_an_archive_of_several_pg_dump_parts_verifies_and_restores_identical(
    source_env: LifeosEnv,
    pg_cluster: PostgresCluster,
    source: str,
    pg_dump_parts_backup: Backup,
    new_database: Callable[[str], str],
) -> None:
    """Archives from before COPY slices stay readable: verify and a whole restore work as they
    did."""
    restored = new_database("pg_dump_parts")
    verify_backup(pg_dump_parts_backup.id, source_env.settings(), source_env.catalog())
    report = restore(source_env, pg_dump_parts_backup, restored)
    assert report.differences == []
    assert_identical(pg_cluster, source, restored)


def test_one_table_restores_from_the_pg_dump_part_that_holds_its_data(
    source_env: LifeosEnv,
    pg_cluster: PostgresCluster,
    source: str,
    pg_dump_parts_backup: Backup,
    new_database: Callable[[str], str],
) -> None:
    """The table's data is in part 1, not in the first part: it is found from that part's
    head."""
    scratch = new_database("pg_dump_part_one")
    report = restore(source_env, pg_dump_parts_backup, scratch, tables=["characters"])
    assert [(c.table, c.restored) for c in report.counts] == [("public.characters", 300)]
    assert table_hashes(pg_cluster, scratch, ["characters"]) == table_hashes(
        pg_cluster, source, ["characters"]
    )


def test_the_head_of_an_archive_is_its_bytes_up_to_the_data_and_lists_alike(
    pg_cluster: PostgresCluster, source: str, tmp_path: Path
) -> None:
    """copy_head keeps a pg_dump archive's table of contents and no data, so a one-table
    restore reads a small head instead of the whole part; pg_restore must list it the same."""
    from lifeos_backup.kinds.postgres.tochead import copy_head

    pg_dump, pg_restore = (str(pg_cluster.bindir / name) for name in ("pg_dump", "pg_restore"))
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


def test_the_head_of_an_unknown_archive_is_all_of_it() -> None:
    """An archive version copy_head does not know is copied whole, which pg_restore reads just
    the same: never a cut in the wrong place."""
    from lifeos_backup.kinds.postgres.tochead import copy_head

    other = io.BytesIO(b"PGDMP" + bytes([1, 99, 0]) + b"rest of it" * 100)
    copied = io.BytesIO()
    assert copy_head(other, copied) is False and copied.getvalue() == other.getvalue()


# ----------------------------------------------------------------------------- COPY slices


def test_copy_slices_tile_every_table_and_hold_all_its_rows(
    pg_cluster: PostgresCluster, source: str, shared_sliced_backup: Backup
) -> None:
    """Slices cut a table by pages: together they must cover every page once and every row,
    and the pg_dump part keeps the definitions without data of its own."""
    manifest = shared_sliced_backup.manifest()
    parts = manifest.facts["parts"]
    assert "copy" not in parts[0] and all("copy" in p for p in parts[1:])
    assert parts[-1]["offset"] + parts[-1]["size"] == shared_sliced_backup.archive.stat().st_size
    assert sum(p["dump_bytes"] for p in parts) == manifest.facts["dump_bytes"]
    counts = {t["name"]: t["rows"] for t in manifest.facts["tables"]}
    with psycopg.connect(pg_cluster.url(source)) as conn:
        for table in TABLES:
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
    listed = pg_list(pg_cluster, shared_sliced_backup.archive, parts[0])
    assert "TABLE public characters" in listed and "TABLE DATA" not in listed


def test_an_archive_of_copy_slices_restores_identical_whole_or_one_table(
    source_env: LifeosEnv,
    pg_cluster: PostgresCluster,
    source: str,
    shared_sliced_backup: Backup,
    new_database: Callable[[str], str],
) -> None:
    """Restoring from slices gives the same database as the source; `--table` takes only that
    table's slices and creates no other table."""
    restored, scratch = new_database("slices"), new_database("slice_one")
    report = restore(source_env, shared_sliced_backup, restored)
    assert report.differences == [] and len(report.counts) == 6
    assert_identical(pg_cluster, source, restored)

    report = restore(source_env, shared_sliced_backup, scratch, jobs=1, tables=["characters"])
    assert [(c.table, c.restored) for c in report.counts] == [("public.characters", 300)]
    assert table_hashes(pg_cluster, scratch, ["characters"]) == table_hashes(
        pg_cluster, source, ["characters"]
    )
    assert public_tables(pg_cluster, scratch) == [("characters",)]


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
    lifeos_env: LifeosEnv,
    pg_cluster: PostgresCluster,
    own_source: str,
    sliced: None,
    new_database: Callable[[str], str],
) -> None:
    """COPY binary needs the same types on both sides: a user type (enum) stays text. psql's
    \\copy must take any quoted name; an index comment follows its early-built index."""
    restored = new_database("formats")
    with psycopg.connect(pg_cluster.url(own_source), autocommit=True) as conn:
        conn.execute(ODD_SCHEMA)
    backup = backup_now(lifeos_env)
    manifest = backup.manifest()
    formats = {(p["copy"]["name"], p["copy"]["format"]) for p in manifest.facts["parts"][1:]}
    assert formats == {(t, "binary") for t in TABLES} | {(ODD_TABLE, "text")}
    counts = {t["name"]: t["rows"] for t in manifest.facts["tables"]}
    assert counts[ODD_TABLE] == 500 and counts["characters"] == 300

    report = restore(lifeos_env, backup, restored, manifest)
    assert report.differences == [] and len(report.counts) == 7
    assert_identical(pg_cluster, own_source, restored)
    assert table_hashes(pg_cluster, restored, [ODD_TABLE]) == table_hashes(
        pg_cluster, own_source, [ODD_TABLE]
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
    lifeos_env: LifeosEnv,
    pg_cluster: PostgresCluster,
    own_source: str,
    sliced: None,
    new_database: Callable[[str], str],
) -> None:
    """char(n) pads every value to n characters on input, so a slice leaves the trailing blanks
    out; a bpchar without a length keeps its trailing blanks as data, and arrays stay as they
    are."""
    restored = new_database("padded")
    with psycopg.connect(pg_cluster.url(own_source), autocommit=True) as conn:
        conn.execute(PADDED_SCHEMA)
    backup = backup_now(lifeos_env)
    manifest = backup.manifest()
    trimmed = {
        (p["copy"]["name"], p["copy"]["format"], tuple(p["copy"]["trimmed"]))
        for p in manifest.facts["parts"][1:]
    }
    assert trimmed == {(t, "binary", ()) for t in TABLES} | {("codes", "binary", ("code", "label"))}

    report = restore(lifeos_env, backup, restored, manifest)
    assert report.differences == []
    assert padded_bytes(pg_cluster, restored) == padded_bytes(pg_cluster, own_source)
    assert table_hashes(pg_cluster, restored, ["codes"]) == table_hashes(
        pg_cluster, own_source, ["codes"]
    )


def test_a_slice_that_cannot_load_fails_the_restore_and_drops_what_it_created(
    source_env: LifeosEnv,
    pg_cluster: PostgresCluster,
    shared_sliced_backup: Backup,
    new_database: Callable[[str], str],
) -> None:
    """A restore that fails half-way must not leave a database that looks restored."""
    target = new_database("bad_slice")
    manifest = shared_sliced_backup.manifest()
    piece = next(p["copy"] for p in manifest.facts["parts"][1:] if p["copy"]["rows"])
    piece["columns"][-1] = "no_such_column"
    with pytest.raises(PermanentError, match=f"loading the rows of public.{piece['name']}"):
        restore(source_env, shared_sliced_backup, target, manifest)
    assert not pg_cluster.database_exists(target)


# ---------------------------------------------------------------- restore order and guards


def test_autovacuum_is_kept_off_a_table_from_its_first_slice_to_its_index_build(
    source_env: LifeosEnv,
    pg_cluster: PostgresCluster,
    source: str,
    shared_sliced_backup: Backup,
    new_database: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Slices commit one by one: an autovacuum started on a half-loaded table holds up its index
    build for deadlock_timeout, then is cancelled (docs/decisions.md, "PostgreSQL restore")."""
    from lifeos_backup.kinds.postgres import restore as restore_module

    restored = new_database("guarded")
    seen: list[tuple[str, bool]] = []
    real_copy = restore_module.copy_into

    def copy_then_vacuum(piece, *args):  # type: ignore[no-untyped-def]
        rows = real_copy(piece, *args)
        seen.append((piece.name, vacuum_skipped(pg_cluster.url(restored), piece.name)))
        return rows

    monkeypatch.setattr(restore_module, "copy_into", copy_then_vacuum)
    report = restore(source_env, shared_sliced_backup, restored)
    assert report.differences == []
    assert {name for name, _ in seen} == set(TABLES)
    assert all(skipped for _, skipped in seen), seen
    assert not any(vacuum_skipped(pg_cluster.url(restored), t) for t in TABLES)
    assert_identical(pg_cluster, source, restored)


@pytest.fixture
def restore_events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """What a restore does, in order: ("copy", table) per slice loaded, ("build", workers,
    entries) per pg_restore of a table's own keys or indexes, with the
    max_parallel_maintenance_workers the server gives that build and the "TYPE name" of the
    post-data entries it builds."""
    from lifeos_backup.kinds.postgres import restore as restore_module

    events: list[tuple[str, ...]] = []
    real_copy, real_tracked = restore_module.copy_into, restore_module.run_tracked

    def copy(piece, *args):  # type: ignore[no-untyped-def]
        events.append(("copy", piece.name))
        return real_copy(piece, *args)

    def tracked(args, *rest):  # type: ignore[no-untyped-def]
        [dbname] = [a.removeprefix("--dbname=") for a in args if a.startswith("--dbname=")]
        with psycopg.connect(dbname) as conn:  # what the server gives the build's connection
            [(workers,)] = conn.execute("SHOW max_parallel_maintenance_workers").fetchall()
        [listed] = [a.removeprefix("--use-list=") for a in args if a.startswith("--use-list=")]
        entries = [
            f"{fields[3]} {fields[5]}" if fields[3] == "INDEX" else f"{fields[3]} {fields[6]}"
            for fields in (line.split() for line in Path(listed).read_text().splitlines())
            if fields[3] in ("INDEX", "CONSTRAINT")
        ]
        events.append(("build", workers, " ".join(entries)))
        return real_tracked(args, *rest)

    monkeypatch.setattr(restore_module, "copy_into", copy)
    monkeypatch.setattr(restore_module, "run_tracked", tracked)
    return events


def reversed_slices(backup: Backup) -> tuple[Manifest, list[str]]:
    """The manifest with its slices listed in reverse, and the tables biggest first."""
    manifest = backup.manifest()
    parts = manifest.facts["parts"]
    parts[1:] = parts[:0:-1]  # whatever order the archive lists its slices in
    size: dict[str, int] = {}
    for part in parts[1:]:
        name = part["copy"]["name"]
        size[name] = size.get(name, 0) + part["dump_bytes"]
    assert len(set(size.values())) > 1  # an order to get right
    return manifest, sorted(TABLES, key=lambda t: (-size[t], t))


def test_with_one_job_tables_load_biggest_first_each_then_its_keys_and_indexes(
    source_env: LifeosEnv,
    shared_sliced_backup: Backup,
    restore_events: list[tuple[str, ...]],
    new_database: Callable[[str], str],
) -> None:
    """The biggest table's load and then its index builds are the restore's longest chain, so it
    starts first; its keys come first (their lock would wait for any index build), then each
    index alone, the GIN index before the B-trees; alone, a build gets the server's parallel
    workers (its default)."""
    manifest, by_size = reversed_slices(shared_sliced_backup)
    report = restore(source_env, shared_sliced_backup, new_database("alone"), manifest, jobs=1)
    assert report.differences == []
    copies = [name for kind, name, *_ in restore_events if kind == "copy"]
    slices = [p["copy"]["name"] for p in manifest.facts["parts"][1:]]
    assert copies == [table for table in by_size for name in slices if name == table]
    kinds = [event[0] for event in restore_events]
    # Each table's builds follow its last slice and precede the next table's first.
    for table, nxt in pairwise(by_size):
        last = len(copies) - copies[::-1].index(table) - 1
        first_next = copies.index(nxt)
        between = kinds[_nth(kinds, "copy", last) + 1 : _nth(kinds, "copy", first_next)]
        assert between and set(between) == {"build"}, (table, restore_events)
    builds = [event for event in restore_events if event[0] == "build"]
    assert {workers for _, workers, _ in builds} == {"2"}
    characters = [entries for _, _, entries in builds if "characters_" in entries]
    assert characters == [
        "CONSTRAINT characters_pkey", "INDEX characters_traits_gin", "INDEX characters_name_idx"
    ]


def _nth(kinds: list[str], kind: str, n: int) -> int:
    """Index in `kinds` of the n-th (from 0) occurrence of `kind`."""
    return [i for i, k in enumerate(kinds) if k == kind][n]


def test_with_several_jobs_the_biggest_table_loads_first_and_a_build_beside_others_is_serial(
    source_env: LifeosEnv,
    pg_cluster: PostgresCluster,
    source: str,
    shared_sliced_backup: Backup,
    restore_events: list[tuple[str, ...]],
    new_database: Callable[[str], str],
) -> None:
    """Beside other jobs a parallel index build would crowd them out, so a build that has
    company runs as one process (docs/decisions.md, "PostgreSQL restore")."""
    manifest, by_size = reversed_slices(shared_sliced_backup)
    beside = new_database("beside")
    report = restore(source_env, shared_sliced_backup, beside, manifest)
    assert report.differences == []
    assert [event[1] for event in restore_events if event[0] == "copy"][:2] == [by_size[0]] * 2
    builds = [event[1] for event in restore_events if event[0] == "build"]
    assert len(builds) >= len(TABLES) and "0" in builds
    assert_identical(pg_cluster, source, beside)


def test_a_table_already_locked_is_loaded_without_a_guard(pg_database: PgDatabase) -> None:
    """The guard only saves time: a table someone else holds (a manual VACUUM, a LOCK) is
    loaded without it, after LOCK_TIMEOUT, and never blocks the restore."""
    from lifeos_backup.kinds.postgres.conninfo import PgTarget
    from lifeos_backup.kinds.postgres.vacuumguard import VacuumGuards

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


# ------------------------------------------------------------ backups that fail, and leave nothing


def test_a_pg_dump_older_than_the_server_is_refused_before_any_file(
    lifeos_env: LifeosEnv, pg_cluster: PostgresCluster, fake_bin: Callable[[str], Path]
) -> None:
    """An older pg_dump cannot dump a newer server faithfully: the version is checked first."""
    bindir = fake_bin("#!/bin/sh\necho 'pg_dump (PostgreSQL) 14.9'\n")
    lifeos_env.set(LIFEOS_DATABASE_URL=pg_cluster.url(), LIFEOS_PG_BIN_DIR=str(bindir))
    with pytest.raises(ToolTooOld, match=r"pg_dump 14\.9 is older than the PostgreSQL server 15"):
        create_backup("postgres", lifeos_env.settings(), lifeos_env.catalog())
    assert folder_contents(lifeos_env) == []
    [row] = lifeos_env.catalog().list(kind="postgres")
    assert row.status == FAILED and "14.9" in (row.error or "")


def test_a_pg_dump_killed_mid_dump_is_a_passing_failure_and_leaves_no_file(
    lifeos_env: LifeosEnv,
    pg_cluster: PostgresCluster,
    source: str,
    fake_bin: Callable[[str], Path],
) -> None:
    """Killed by a signal (an operator, the OOM killer) is passing: the task retries it; the
    partial archive is removed."""
    real = pg_cluster.bindir / "pg_dump"
    bindir = fake_bin(
        "#!/bin/bash\n"
        f'if [ "$1" = "--version" ]; then exec {real} --version; fi\n'
        f'{real} "$@" | head -c 300000\n'
        "kill -KILL $$\n"
    )
    lifeos_env.set(LIFEOS_DATABASE_URL=pg_cluster.url(source), LIFEOS_PG_BIN_DIR=str(bindir))
    with pytest.raises(SourceUnavailable, match="killed by SIGKILL"):
        create_backup("postgres", lifeos_env.settings(), lifeos_env.catalog())
    assert folder_contents(lifeos_env) == []
    [row] = lifeos_env.catalog().list(kind="postgres")
    assert row.status == FAILED and "SIGKILL" in (row.error or "")


def test_a_psql_that_does_not_report_its_rows_fails_the_backup_without_a_file(
    source_env: LifeosEnv, sliced: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest's row counts are the server's; with none reported there is no backup."""
    from lifeos_backup.kinds.postgres import dump, rows

    def silent(*args, **kwargs) -> list[str]:
        argv = rows.dump_args(*args, **kwargs)
        at = next(i for i, a in enumerate(argv) if a.startswith("\\warn"))
        return argv[: at - 1] + argv[at + 1 :]  # without that `-c \\warn ...`

    monkeypatch.setattr(dump, "slice_args", silent)
    with pytest.raises(PermanentError, match="did not report the rows"):
        create_backup("postgres", source_env.settings(), source_env.catalog(), reason="t")
    assert [r.status for r in source_env.catalog().list(kind="postgres")] == [FAILED]
    assert folder_contents(source_env) == []


def test_a_table_locked_away_makes_the_backup_wait_then_retry(
    source_env: LifeosEnv,
    pg_cluster: PostgresCluster,
    source: str,
    sliced: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A migration holding a table (ACCESS EXCLUSIVE) past the lock wait: a retryable failure
    naming the cause, no file."""
    import lifeos_backup.kinds.postgres.dump as dump_module

    monkeypatch.setattr(dump_module, "LOCK_WAIT", "1s")
    with psycopg.connect(pg_cluster.url(source)) as migration:
        migration.execute("LOCK TABLE characters IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(SourceUnavailable, match="could not lock the tables"):
            create_backup("postgres", source_env.settings(), source_env.catalog())
        migration.rollback()  # the shared source is left as it was
    assert folder_contents(source_env) == []
    [row] = source_env.catalog().list(kind="postgres")
    assert row.status == FAILED and "lock" in (row.error or "")


def test_disk_full_during_the_dump_removes_the_partial_file(
    source_env: LifeosEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk is reported as such, and the half-written archive does not stay to fill it."""
    import errno

    import lifeos_backup.kinds.postgres.dump as dump_module
    from lifeos_backup.formats.streams import HashingWriter
    from lifeos_backup.kinds.postgres.dump import DiskFull

    class FillsUp(HashingWriter):
        """The disk is full once 100 kB of the archive are written."""

        def write(self, data: bytes) -> int:
            if self.size + len(data) > 100_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    monkeypatch.setattr(dump_module, "HashingWriter", FillsUp)
    with pytest.raises(DiskFull, match="the backup disk is full"):
        create_backup("postgres", source_env.settings(), source_env.catalog())
    assert folder_contents(source_env) == []
    [row] = source_env.catalog().list(kind="postgres")
    assert row.status == FAILED and "No space left on device" in (row.error or "")
