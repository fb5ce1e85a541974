"""`catalog rebuild` beside working workers: leases, rows changed meanwhile, trust, bad ids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lifeos_backup.core.progress import Progress
from lifeos_backup.core.settings import Settings
from lifeos_backup.jobs.backups import create_backup, verify_backup
from lifeos_backup.jobs.leases import lease
from lifeos_backup.jobs.rebuild import rebuild_local
from lifeos_backup.storage.catalog import Backup, Catalog
from lifeos_backup.storage.catalog.store import CREATED, FAILED, UNVERIFIED, VERIFIED
from tests.support.trees import make_tree


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[tuple[Settings, Catalog, list[str]]]:
    """A repository with two created (not yet verified) JSON backups."""
    make_tree(tmp_path / "app", files=6)
    settings = Settings(
        backup_root=tmp_path / "backups",
        app_dir=tmp_path / "app",
        catalog_url=f"sqlite:///{tmp_path / 'backups' / 'catalog.sqlite3'}",
    )
    catalog = Catalog(settings.effective_catalog_url)
    ids = [create_backup("json", settings, catalog).backup_id for _ in range(2)]
    yield settings, catalog, ids
    catalog.engine.dispose()


def statuses(catalog: Catalog) -> dict[str, str]:
    return {row.id: row.status for row in catalog.list()}


def test_rebuild_checks_every_archive_and_marks_it_verified(repo) -> None:  # type: ignore[no-untyped-def]
    settings, catalog, ids = repo
    report = rebuild_local(settings)
    assert statuses(catalog) == {ids[0]: VERIFIED, ids[1]: VERIFIED}
    assert sorted(report.found) == sorted(ids) and report.statuses[VERIFIED] == 2
    assert all(row.verified_at is not None for row in catalog.list())


def test_a_row_a_worker_changes_during_the_checks_keeps_the_workers_version(repo) -> None:  # type: ignore[no-untyped-def]
    settings, catalog, ids = repo
    worker = Catalog(settings.effective_catalog_url)  # another process's connection
    changed: list[str] = []

    def meanwhile(_report: Progress) -> None:
        if not changed:  # while the first archive is being checked, a worker fails the second
            worker.update(ids[1], status=FAILED, error="worker: failed meanwhile")
            changed.append(ids[1])

    report = rebuild_local(settings, progress=meanwhile)
    assert report.changed_meanwhile == [ids[1]]
    assert statuses(catalog) == {ids[0]: VERIFIED, ids[1]: FAILED}
    assert catalog.get(ids[1]).error == "worker: failed meanwhile"
    worker.engine.dispose()


def test_a_busy_lease_leaves_the_row_as_it_is(repo) -> None:  # type: ignore[no-untyped-def]
    settings, catalog, ids = repo
    with lease(settings.backup_root, ids[0], "task-1", "verify"):
        report = rebuild_local(settings)
    assert report.in_progress == [f"{ids[0]} (verify by task-1)"]
    assert statuses(catalog) == {ids[0]: CREATED, ids[1]: VERIFIED}


def test_trusting_manifests_keeps_what_the_catalog_proved_and_never_verifies(repo) -> None:  # type: ignore[no-untyped-def]
    settings, catalog, ids = repo
    verify_backup(ids[0], settings, catalog)
    with catalog.session() as s:  # a row the catalog lost: listed from its manifest only
        s.delete(s.get(Backup, ids[1]))
    report = rebuild_local(settings, trust=True)
    assert statuses(catalog) == {ids[0]: VERIFIED, ids[1]: UNVERIFIED}
    assert report.statuses == {VERIFIED: 1, UNVERIFIED: 1}
    assert "not re-read" in (catalog.get(ids[1]).error or "")


def test_rows_whose_id_is_not_a_backup_id_are_removed(repo) -> None:  # type: ignore[no-untyped-def]
    settings, catalog, ids = repo
    bad = "json_backup_../../../x"
    catalog.add_backup(
        Backup(
            id=bad,
            kind="json",
            status=VERIFIED,
            path="../x",
            created_at=catalog.get(ids[0]).created_at,
        )
    )
    warnings: list[str] = []
    report = rebuild_local(settings, warn=warnings.append)
    assert report.removed == [bad] and bad not in statuses(catalog)
    assert warnings == [f"catalog row {bad!r} is not a backup id: removed"]
