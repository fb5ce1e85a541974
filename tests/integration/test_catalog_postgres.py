"""The catalog on PostgreSQL (the production choice for several hosts), not only SQLite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from lifeos_backup.core.errors import NotFound
from lifeos_backup.storage.catalog import Backup, Catalog
from tests.support.worker import LifeosEnv

pytestmark = pytest.mark.integration


def test_catalog_migrates_and_round_trips_on_postgres(pg_url: str) -> None:
    catalog = Catalog(pg_url)  # plain postgresql:// URL, as operators write it
    Catalog(pg_url)  # a second process opening it finds the schema at head
    created = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
    for n in range(3):
        catalog.add_backup(
            Backup(
                id=f"json_backup_2026112{n}_020000",
                kind="json",
                status="verified",
                path="json/x.tar.zst",
                reason="",
                initiator="beat",
                host="h",
                created_at=created - timedelta(days=3 - n),
            )
        )
    rows = catalog.list(kind="json")
    assert [r.id for r in rows] == [f"json_backup_2026112{n}_020000" for n in (2, 1, 0)]
    assert rows[0].created_at.tzinfo is not None
    catalog.update(rows[0].id, status="failed", error="disk")
    assert catalog.get(rows[0].id).error == "disk"
    run = catalog.task_started("t1", "lifeos.backup.create", 1, "w")
    catalog.task_finished(run, "succeeded", backup_id=rows[0].id)
    assert [(r.task_id, r.state) for r in catalog.task_runs("t1")] == [("t1", "succeeded")]
    with pytest.raises(NotFound):
        catalog.get("nope")
    with psycopg.connect(pg_url) as conn:
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert version == (_head(),)  # the newest revision, whichever issue added it


def _head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from lifeos_backup.storage.catalog.store import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def test_rebuild_on_postgres_is_in_place_and_keeps_other_tables(
    pg_url: str, lifeos_env: LifeosEnv
) -> None:
    """No generations on PostgreSQL: rows are changed in place, under a table lock."""
    from lifeos_backup.jobs.backups import create_backup
    from lifeos_backup.jobs.rebuild import rebuild_local
    from lifeos_backup.storage import audit
    from tests.support.trees import make_tree

    lifeos_env.set(LIFEOS_CATALOG_URL=pg_url)
    make_tree(lifeos_env.app_dir, files=4)
    settings, catalog = lifeos_env.settings(), lifeos_env.catalog()
    backup_id = create_backup("json", settings, catalog).backup_id
    audit.append(catalog, action="flag.set", target="x", initiator="alice")
    report = rebuild_local(settings)
    assert report.database is None and not report.fresh and report.found == [backup_id]
    assert catalog.get(backup_id).status == "verified"
    assert [r.action for r in audit.records(catalog)] == ["flag.set", "catalog.rebuild"]
    assert not (lifeos_env.backup_root / ".state" / "catalog").exists()
    catalog.engine.dispose()
