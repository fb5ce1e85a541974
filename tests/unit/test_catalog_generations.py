"""The SQLite catalog's pointer and generations: no two database files ever share sidecars."""

from __future__ import annotations

import os
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lifeos_backup.storage.catalog import Backup, Catalog
from lifeos_backup.storage.catalog import generations as gens
from lifeos_backup.storage.catalog.store import VERIFIED, CatalogUnreadable

WHEN = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


def row(backup_id: str = "json_backup_20261201_020000") -> Backup:
    return Backup(id=backup_id, kind="json", status=VERIFIED, path=f"json/{backup_id}.tar.zst",
                  created_at=WHEN)  # fmt: skip


def sidecars(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(("-wal", "-shm")))


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def test_a_new_catalog_is_a_pointer_to_a_private_generation(tmp_path: Path) -> None:
    pointer = tmp_path / "backups" / "catalog.sqlite3"
    catalog = Catalog(f"sqlite:///{pointer}")
    catalog.add_backup(row())
    assert pointer.is_symlink() and not os.path.isabs(os.readlink(pointer))  # relative link
    generation = catalog.database_file
    assert generation is not None and generation.parent == tmp_path / "backups/.state/catalog"
    assert generation.name.startswith("catalog-") and generation.suffix == ".sqlite3"
    assert pointer.resolve() == generation
    assert generation.stat().st_mode & 0o777 == 0o600
    for folder in (pointer.parent, pointer.parent / ".state", generation.parent):
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    # SQLite names the sidecars after the generation, never after the pointer.
    assert sidecars(generation.parent) == [f"{generation.name}-shm", f"{generation.name}-wal"]
    assert sidecars(pointer.parent) == []
    catalog.engine.dispose()


def test_a_deleted_pointer_gives_a_new_generation_that_open_catalogs_follow(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
    worker = Catalog(url)  # a long-running process: keeps its connections
    worker.add_backup(row())
    first = worker.database_file
    (tmp_path / "catalog.sqlite3").unlink()

    cli = Catalog(url)  # the next opener
    assert cli.database_file != first and cli.list() == []
    assert first is not None and first.exists()  # the old generation is left as it was
    # The worker notices the new pointer before its next session and moves over.
    worker.add_backup(row("json_backup_20261201_030000"))
    assert worker.database_file == cli.database_file
    assert [r.id for r in cli.list()] == ["json_backup_20261201_030000"]
    assert [r.id for r in Catalog(f"sqlite:///{first}").list()] == ["json_backup_20261201_020000"]
    worker.engine.dispose()
    cli.engine.dispose()


def test_a_swapped_pointer_is_followed_before_the_next_session(tmp_path: Path) -> None:
    pointer = tmp_path / "catalog.sqlite3"
    worker = Catalog(f"sqlite:///{pointer}")
    assert worker.list() == []
    fresh = gens.new_generation(pointer)
    filler = Catalog(f"sqlite:///{fresh}")  # a plain file: opened as it is
    filler.add_backup(row())
    filler.engine.dispose()
    gens.point(pointer, fresh)
    assert [r.id for r in worker.list()] == ["json_backup_20261201_020000"]
    assert worker.database_file == fresh
    worker.engine.dispose()


def test_a_legacy_plain_file_stays_in_use_as_it_is(tmp_path: Path) -> None:
    legacy = tmp_path / "catalog.sqlite3"
    legacy.touch(mode=0o600)
    catalog = Catalog(f"sqlite:///{legacy}")
    catalog.add_backup(row())
    assert not legacy.is_symlink() and catalog.database_file == legacy
    assert not (tmp_path / ".state").exists()
    assert sidecars(tmp_path) == ["catalog.sqlite3-shm", "catalog.sqlite3-wal"]
    catalog.engine.dispose()


def test_a_deleted_legacy_file_with_its_sidecars_left_never_shares_them(tmp_path: Path) -> None:
    legacy = tmp_path / "catalog.sqlite3"
    legacy.touch(mode=0o600)
    old = Catalog(f"sqlite:///{legacy}")
    old.add_backup(row())
    legacy.unlink()  # `rm catalog.sqlite3` while a worker still has it open
    assert sidecars(tmp_path) == ["catalog.sqlite3-shm", "catalog.sqlite3-wal"]

    new = Catalog(f"sqlite:///{legacy}")
    assert legacy.is_symlink() and new.database_file is not None
    assert new.database_file.parent == tmp_path / ".state" / "catalog"
    new.add_backup(row("json_backup_20261201_040000"))
    assert sidecars(new.database_file.parent) == [
        f"{new.database_file.name}-shm",
        f"{new.database_file.name}-wal",
    ]
    # The old process closes its last connection (SQLite may checkpoint and delete
    # catalog.sqlite3-wal/-shm by name): they were never the new catalog's, which stays intact.
    old._engine.dispose()
    assert set(sidecars(tmp_path)) <= {"catalog.sqlite3-shm", "catalog.sqlite3-wal"}
    assert integrity(new.database_file) == "ok"
    assert [r.id for r in new.list()] == ["json_backup_20261201_040000"]
    # ... and the old object, used again, follows the pointer to the new catalog.
    assert [r.id for r in old.list()] == ["json_backup_20261201_040000"]
    new.engine.dispose()
    old.engine.dispose()


def test_concurrent_openers_of_a_missing_catalog_make_one_generation(tmp_path: Path) -> None:
    pointer = tmp_path / "catalog.sqlite3"
    found: list[Path] = []
    start = threading.Barrier(8)

    def open_it() -> None:
        start.wait()
        found.append(gens.resolve(pointer))

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    made = [p for p in gens.generation_dir(pointer).iterdir() if p.suffix == ".sqlite3"]
    assert len(set(found)) == 1 and made == [found[0]]


def test_an_unusable_file_is_named_and_a_corrupt_catalog_fails_with_a_hint(
    tmp_path: Path,
) -> None:
    pointer = tmp_path / "catalog.sqlite3"
    catalog = Catalog(f"sqlite:///{pointer}")
    catalog.add_backup(row())
    generation = catalog.database_file
    assert generation is not None and gens.problem_of(generation) is None
    catalog.engine.dispose()
    empty = tmp_path / "empty.sqlite3"
    empty.touch()
    assert gens.problem_of(empty) == "it holds no catalog tables"
    generation.write_bytes(b"this is not a database" * 100)
    assert gens.problem_of(generation) == "file is not a database"
    with pytest.raises(CatalogUnreadable, match="catalog rebuild"):
        Catalog(f"sqlite:///{pointer}")


def test_swap_keeps_the_replaced_file_aside_and_refuses_a_changed_catalog(
    tmp_path: Path,
) -> None:
    legacy = tmp_path / "catalog.sqlite3"
    legacy.write_bytes(b"garbage")
    fresh = gens.new_generation(legacy)
    aside = gens.swap(legacy, fresh, legacy, gens.identity(legacy))
    assert aside.name.startswith("catalog.sqlite3.corrupt-") and aside.read_bytes() == b"garbage"
    assert legacy.is_symlink() and gens.current(legacy) == fresh
    assert gens.kept_aside(legacy) == [aside]
    other = gens.new_generation(legacy)
    with pytest.raises(Exception, match="changed while it was rebuilt"):
        gens.swap(legacy, other, fresh, gens.identity(other))
    assert gens.current(legacy) == fresh
