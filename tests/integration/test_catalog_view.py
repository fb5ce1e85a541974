"""The read-only catalog view answers exactly what the store answers, on SQLite and PostgreSQL.

`list`, `show` and `audit` read through lifeos_backup.storage.catalog.view (no SQLAlchemy); the
workers and every other command through the store. The two must never disagree, so each query
of the view runs here beside its counterpart in the store, on the same catalog, and the answers
are compared field by field, times included.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lifeos_backup.core.errors import NotFound
from lifeos_backup.storage import audit
from lifeos_backup.storage.catalog import Backup, Catalog
from lifeos_backup.storage.catalog.generations import current
from lifeos_backup.storage.catalog.models import Action
from lifeos_backup.storage.catalog.schema import CatalogUnreadable
from lifeos_backup.storage.catalog.view import ActionRow, BackupRow, open_view
from lifeos_backup.storage.offsite.state import copies_by_backup, mark
from lifeos_backup.storage.repository import locate
from tests.support.services import PostgresCluster, temporary_database

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 28, 2, 0, 0, 123456, tzinfo=UTC)


def _fill(catalog: Catalog) -> None:
    """Backups of two kinds and several statuses (two at the same second), off-site copies on
    two targets, and audit records of several actions."""
    rows = [
        ("json_backup_20261128_020000", "json", "verified", T0),
        ("json_backup_20261128_020001", "json", "failed", T0 + timedelta(seconds=1)),
        ("postgres_full_20261128_020001", "postgres", "verified", T0 + timedelta(seconds=1)),
        ("json_backup_20261127_020000", "json", "deleted", T0 - timedelta(days=1)),
    ]
    for backup_id, kind, status, created in rows:
        catalog.add_backup(
            Backup(
                id=backup_id,
                kind=kind,
                status=status,
                path=f"{kind}/{backup_id}.tar.zst",
                size=1234,
                reason="test",
                initiator="beat",
                host="h",
                created_at=created,
                verified_at=created + timedelta(seconds=2) if status == "verified" else None,
                duration_s=1.5,
            )
        )
    mark(catalog, "json_backup_20261128_020000", "uploaded", target="s3", key="k")
    mark(catalog, "json_backup_20261128_020000", "failed", target="gcs", error="denied")
    for action, target in (("backup", "json"), ("restore.json", "x"), ("restore.postgres", "y")):
        catalog.record_action(action, target, "alice", {"n": 1}, backup_id=rows[0][0])


def _as_tuple(row: object, names: list[str]) -> tuple[object, ...]:
    return tuple(getattr(row, n) for n in names)


def _compare(catalog: Catalog) -> None:
    names = [f.name for f in dataclasses.fields(BackupRow)]
    with open_view(catalog.url) as view:
        for kind in (None, "json", "postgres", "basebackup"):
            ours = [_as_tuple(r, names) for r in view.backups(kind=kind)]
            theirs = [_as_tuple(r, names) for r in catalog.list(kind=kind)]
            assert ours == theirs, kind
        assert ours == [] and len(view.backups()) == 4
        one = "json_backup_20261128_020000"
        assert _as_tuple(view.get(one), names) == _as_tuple(catalog.get(one), names)
        assert view.get(one).created_at == T0  # aware UTC, microseconds kept
        with pytest.raises(NotFound) as found:
            view.get("json_backup_20990101_000000")
        with pytest.raises(NotFound) as stored:
            catalog.get("json_backup_20990101_000000")
        assert str(found.value) == str(stored.value)
        copies = copies_by_backup(catalog)
        held = {b: {t: c.status for t, c in by.items()} for b, by in copies.items()}
        assert view.copy_statuses() == held == {one: {"s3": "uploaded", "gcs": "failed"}}
        for since in (None, T0 - timedelta(days=1), datetime.now(UTC) + timedelta(hours=1)):
            for action in (None, "restore", "restore.json", "backup", "drill"):
                ours_a = [audit.as_dict(r) for r in view.actions(since=since, action=action)]
                theirs_a = [
                    audit.as_dict(r) for r in audit.records(catalog, since=since, action=action)
                ]
                assert ours_a == theirs_a, (since, action)
        assert len(view.actions(action="restore")) == 2


def test_the_rows_carry_every_column_of_their_tables() -> None:
    """A column added by a migration must reach the view's rows too."""
    for row, model in ((BackupRow, Backup), (ActionRow, Action)):
        assert [f.name for f in dataclasses.fields(row)] == list(model.__table__.columns.keys())


def test_the_view_answers_as_the_store_on_sqlite(tmp_path: Path) -> None:
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    _fill(catalog)
    _compare(catalog)


def test_the_view_answers_as_the_store_on_postgresql(pg_cluster: PostgresCluster) -> None:
    with temporary_database(pg_cluster) as database:
        for url in (database.url, database.url.replace("postgresql://", "postgresql+psycopg://")):
            catalog = Catalog(url)
            if url == database.url:
                _fill(catalog)
            _compare(catalog)
            catalog.engine.dispose()


def test_a_catalog_the_view_cannot_open_itself_goes_through_the_store(tmp_path: Path) -> None:
    """A missing catalog is made (as every command makes it); a URL with a query string is
    read through the store's connection; both answer the same."""
    missing = f"sqlite:///{tmp_path / 'new' / 'catalog.sqlite3'}"
    (tmp_path / "new").mkdir()
    with open_view(missing) as view:
        assert view.backups() == [] and view.actions() == []
    assert current(tmp_path / "new" / "catalog.sqlite3") is not None
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    _fill(catalog)
    with open_view(f"sqlite:///{tmp_path / 'catalog.sqlite3'}?timeout=5") as view:
        assert [r.id for r in view.backups()] == [r.id for r in catalog.list()]


def test_an_older_schema_is_migrated_before_it_is_read(tmp_path: Path) -> None:
    """A catalog one migration behind (a plain file, as catalogs before generations were) is
    brought to the newest schema by the store, then read."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    from lifeos_backup.storage.catalog.store import HEAD, MIGRATIONS

    database = tmp_path / "catalog.sqlite3"
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    engine = create_engine(f"sqlite:///{database}")
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0006_dashboard")
    engine.dispose()
    with open_view(f"sqlite:///{database}") as view:
        assert view.backups() == [] and view.copy_statuses() == {}
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (HEAD,)


def test_a_corrupt_catalog_is_an_error_with_the_way_out(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
    Catalog(url)
    database = current(tmp_path / "catalog.sqlite3")
    assert database is not None
    for sidecar in database.parent.glob(database.name + "-*"):
        sidecar.unlink()
    database.write_bytes(b"this is not a database" * 400)
    with pytest.raises(CatalogUnreadable) as raised, open_view(url) as view:
        view.backups()
    assert "catalog rebuild" in (raised.value.hint or "")


def test_show_finds_a_backup_through_the_view(tmp_path: Path) -> None:
    """`locate` takes the view as it takes the store: deleted backups are refused alike."""
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    _fill(catalog)

    class Root:
        backup_root = tmp_path

    with open_view(catalog.url) as view:
        row, archive, manifest = locate(Root, view, "json_backup_20261128_020000")  # type: ignore[arg-type]
        assert archive == tmp_path / row.path
        assert manifest.name == "json_backup_20261128_020000.manifest.json"
        with pytest.raises(NotFound, match="deleted by rotation"):
            locate(Root, view, "json_backup_20261127_020000")  # type: ignore[arg-type]


def test_listing_commands_do_not_import_sqlalchemy(tmp_path: Path) -> None:
    """`list`, `show`, `ls` and `audit` on a repository with a real backup, each in a fresh
    interpreter: SQLAlchemy is not loaded (it is about half of their start-up;
    benchmarks/cli_start.py), and each answers about the backup."""
    from lifeos_backup.core.settings import Settings
    from lifeos_backup.jobs.backups import create_backup, verify_backup

    app = tmp_path / "app"
    (app / "data" / "characters").mkdir(parents=True)
    (app / "data" / "characters" / "ana.json").write_text('{"id": "ana"}')
    root = tmp_path / "backups"
    settings = Settings(backup_root=root, app_dir=app)
    catalog = Catalog(settings.effective_catalog_url)
    backup_id = create_backup("json", settings, catalog, reason="test").backup_id
    verify_backup(backup_id, settings, catalog)
    runs = {
        "list": ["list"],
        "show": ["show", backup_id],
        "ls": ["ls", backup_id],
        "audit": ["audit", "--since", "7d"],
    }
    expected = {"list": backup_id, "show": backup_id, "ls": "data/characters/ana.json", "audit": ""}
    for name, args in runs.items():
        code = (
            "import sys\n"
            "from lifeos_backup.cli import main\n"
            f"sys.argv = ['lifeos-backup', '--repo', {str(root)!r}, *{args!r}]\n"
            "try:\n"
            "    main()\n"
            "finally:\n"
            "    print('@@SQLALCHEMY@@', 'sqlalchemy' in sys.modules)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
        )
        assert done.returncode == 0, (name, done.stderr[-2000:])
        assert "@@SQLALCHEMY@@ False" in done.stdout, name
        assert expected[name] in done.stdout, (name, done.stdout[-2000:])


_WRITER = """
import select, sys
from datetime import UTC, datetime, timedelta
from lifeos_backup.storage.catalog import Backup, Catalog
catalog = Catalog(sys.argv[1])
print("ready", flush=True)
start = datetime(2026, 11, 1, tzinfo=UTC)
n = 0
while n < 100000:  # until the test writes a line (or far past what it needs)
    backup_id = f"json_backup_{(start + timedelta(minutes=n)):%Y%m%d_%H%M%S}"
    catalog.add_backup(Backup(id=backup_id, kind="json", status="running", path="json/x",
                              reason="", initiator="t", host="h", created_at=start))
    catalog.update(backup_id, status="verified")
    n += 1
    if n % 20 == 0 and select.select([sys.stdin], [], [], 0)[0]:
        break
print("wrote", n, flush=True)
"""


def test_listing_while_a_worker_writes_never_fails(tmp_path: Path) -> None:
    """Two processes race: one adds and updates backups as fast as it can (the store), while
    `list --json` runs again and again (the view). Every listing succeeds with whole rows: the
    view reads a consistent snapshot, and waits instead of failing when the file is busy."""
    root = tmp_path / "backups"
    root.mkdir()
    url = f"sqlite:///{root / 'catalog.sqlite3'}"
    Catalog(url)
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        seen = []
        for _ in range(4):
            code = (
                "import sys\n"
                "from lifeos_backup.cli import main\n"
                f"sys.argv = ['lifeos-backup', '--repo', {str(root)!r}, 'list', '--json']\n"
                "main()\n"
            )
            done = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, done.stderr[-2000:]
            rows = json.loads(done.stdout)
            assert all(r["status"] in ("running", "verified") and r["id"] for r in rows)
            seen.append(len(rows))
        assert writer.poll() is None, "the writer stopped early"
    finally:
        if writer.stdin is not None:
            writer.stdin.write("stop\n")
            writer.stdin.close()
        out = writer.stdout.read() if writer.stdout is not None else ""
        writer.wait(timeout=60)
    assert writer.returncode == 0
    wrote = int(out.split()[-1])
    assert seen == sorted(seen) and seen[-1] > seen[0] > 0  # the listings saw the writes grow
    assert wrote >= seen[-1]
