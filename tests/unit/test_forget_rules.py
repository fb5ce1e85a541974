"""What `forget` refuses without --force (lifeos_backup.jobs.forget.plan_forget), on a scratch
catalog: the newest verified backup of a kind, and a verified base backup point-in-time
recovery still starts from because the newer base backup is not verified yet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lifeos_backup.core.errors import NotFound
from lifeos_backup.core.names import LAYOUTS
from lifeos_backup.core.settings import Settings
from lifeos_backup.jobs.forget import Refused, plan_forget
from lifeos_backup.storage.catalog import Backup, Catalog, open_catalog

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def add(catalog: Catalog, kind: str, day: int, status: str) -> str:
    at = T0 + timedelta(days=day)
    backup_id = f"{LAYOUTS[kind].prefix}{at:%Y%m%d_%H%M%S}"
    catalog.add_backup(Backup(id=backup_id, kind=kind, status=status, path=f"{kind}/{backup_id}",
                              created_at=at, size=10))  # fmt: skip
    return backup_id


@pytest.fixture
def scratch(tmp_path: Path) -> tuple[Settings, Catalog]:
    (tmp_path / "backups").mkdir()
    settings = Settings(backup_root=tmp_path / "backups")  # type: ignore[call-arg]
    return settings, open_catalog(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")


def test_newest_verified_is_refused_older_ones_go(scratch: tuple[Settings, Catalog]) -> None:
    settings, catalog = scratch
    old, new = add(catalog, "json", 1, "verified"), add(catalog, "json", 2, "verified")
    failed = add(catalog, "json", 3, "failed")
    assert [d.id for d in plan_forget(settings, catalog, [old, failed], force=False)] == [
        old,
        failed,
    ]
    with pytest.raises(Refused) as refused:
        plan_forget(settings, catalog, [old, new], force=False)
    assert new in str(refused.value) and old not in refused.value.what
    assert [d.id for d in plan_forget(settings, catalog, [new], force=True)] == [new]
    with pytest.raises(NotFound):
        plan_forget(settings, catalog, ["json_backup_20200101_000000"], force=False)


def test_base_backup_recovery_starts_from_is_refused(scratch: tuple[Settings, Catalog]) -> None:
    settings, catalog = scratch
    first = add(catalog, "basebackup", 1, "verified")
    pending = add(catalog, "basebackup", 2, "created")  # newer than `first`, not proven yet
    newest = add(catalog, "basebackup", 3, "verified")
    with pytest.raises(Refused) as refused:
        plan_forget(settings, catalog, [first], force=False)
    assert first in refused.value.what and pending in refused.value.detail
    with pytest.raises(Refused, match="newest verified backup of its kind"):
        plan_forget(settings, catalog, [newest], force=False)
    # with the unproven one forgotten too, nothing recovers from `first` alone any more
    assert [d.id for d in plan_forget(settings, catalog, [first, pending], force=False)] == [
        first,
        pending,
    ]
    assert [d.id for d in plan_forget(settings, catalog, [first], force=True)] == [first]
