"""The clean-up never touches a live backup, and resolves every backup whose job is gone.

A live job is a process holding the backup's lease: here a child process, which the test kills
to make it a dead one, exactly as a SIGKILLed worker would be.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from lifeos_backup.core.settings import Settings
from lifeos_backup.jobs.leftovers import (
    CHAIN_LOST,
    CREATED_GRACE,
    INTERRUPTED,
    clean_leftovers,
    sweep,
)
from lifeos_backup.storage.catalog import Backup, Catalog
from lifeos_backup.storage.catalog.store import (
    CREATED,
    FAILED,
    INCOMPLETE,
    RUNNING,
    VERIFIED,
    utcnow,
)

ID = "json_backup_20260101_020000"
OTHER = "json_backup_20260101_030000"


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Settings, Catalog]:
    root = tmp_path / "backups"
    (root / "json").mkdir(parents=True)
    settings = Settings(backup_root=root, _env_file=None)  # type: ignore[call-arg]
    return settings, Catalog(f"sqlite:///{root / 'catalog.sqlite3'}")


@contextmanager
def held_by_another_process(root: Path, backup_id: str) -> Iterator[subprocess.Popen[str]]:
    """A live process holding the backup's lease, as a worker writing or verifying it."""
    code = (
        "import sys, time; from pathlib import Path; from lifeos_backup.jobs.leases import lease\n"
        f"with lease(Path({str(root)!r}), {backup_id!r}, 'task-x', 'verify'):\n"
        "    print('held', flush=True); time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _row(catalog: Catalog, backup_id: str, status: str, **extra: object) -> None:
    fields = {"host": socket.gethostname(), "created_at": utcnow() - timedelta(hours=1), **extra}
    catalog.add_backup(
        Backup(id=backup_id, kind="json", status=status, path=f"json/{backup_id}.tar.zst", **fields)
    )


def _files(settings: Settings) -> list[str]:
    return sorted(p.name for p in (settings.backup_root / "json").iterdir())


def test_a_verify_in_progress_keeps_its_partial_manifest(repo) -> None:
    settings, catalog = repo
    folder = settings.backup_root / "json"
    _row(catalog, ID, CREATED)
    (folder / f"{ID}.tar.zst").write_bytes(b"archive")
    (folder / f"{ID}.manifest.json").write_text("{}")
    (folder / f".{ID}.manifest.json.partial").write_text("being written by verify")
    with held_by_another_process(settings.backup_root, ID):
        assert clean_leftovers("json", settings, catalog, "next-create") == []
        assert f".{ID}.manifest.json.partial" in _files(settings)
    # the verifier died: now its partial file is a leftover
    swept = clean_leftovers("json", settings, catalog, "next-create")
    assert [s.removed for s in swept] == [(f".{ID}.manifest.json.partial",)]
    assert _files(settings) == [f"{ID}.manifest.json", f"{ID}.tar.zst"]
    assert catalog.get(ID).status == CREATED  # judging a created backup is the sweeper's job


def test_a_running_backup_is_left_alone_while_its_writer_lives(repo) -> None:
    settings, catalog = repo
    folder = settings.backup_root / "json"
    _row(catalog, ID, RUNNING)
    (folder / f".{ID}.tar.zst.partial").write_bytes(b"half")
    with held_by_another_process(settings.backup_root, ID):
        assert clean_leftovers("json", settings, catalog, "next-create") == []
        assert catalog.get(ID).status == RUNNING
    [swept] = clean_leftovers("json", settings, catalog, "next-create")
    assert swept.failed == INTERRUPTED
    assert catalog.get(ID).status == FAILED and catalog.get(ID).error == INTERRUPTED
    assert _files(settings) == []


def test_complete_and_incomplete_backups_are_never_removed(repo) -> None:
    settings, catalog = repo
    folder = settings.backup_root / "json"
    # a complete backup the catalog does not know (a catalog lost and not yet rebuilt)
    (folder / f"{ID}.tar.zst").write_bytes(b"archive")
    (folder / f"{ID}.manifest.json").write_text("{}")
    # an archive without its manifest that a rebuild listed as incomplete
    _row(catalog, OTHER, INCOMPLETE)
    (folder / f"{OTHER}.tar.zst").write_bytes(b"archive")
    assert clean_leftovers("json", settings, catalog, "next-create") == []
    assert len(_files(settings)) == 3


def test_an_archive_without_manifest_of_a_failed_or_unknown_backup_is_a_leftover(repo) -> None:
    settings, catalog = repo
    folder = settings.backup_root / "json"
    _row(catalog, ID, FAILED)
    (folder / f"{ID}.tar.zst").write_bytes(b"half written, renamed, no manifest")
    (folder / f"{OTHER}.tar.zst").write_bytes(b"unknown to the catalog")
    swept = clean_leftovers("json", settings, catalog, "next-create")
    assert sorted(s.backup_id for s in swept) == [ID, OTHER]
    assert _files(settings) == []


def test_a_created_backup_is_failed_only_when_its_verify_is_nowhere(repo) -> None:
    settings, catalog = repo
    finished = utcnow() - CREATED_GRACE - timedelta(seconds=1)
    _row(catalog, ID, CREATED, finished_at=finished, task_id="verify-queued")
    _row(catalog, OTHER, CREATED, finished_at=finished, task_id="verify-lost")
    queued = {"verify-queued"}
    swept = sweep(settings, catalog, queued.__contains__)
    assert [(s.backup_id, s.failed) for s in swept] == [(OTHER, CHAIN_LOST)]
    assert catalog.get(ID).status == CREATED
    assert catalog.get(OTHER).status == FAILED


def test_a_just_created_backup_waits_for_its_verify_message(repo) -> None:
    settings, catalog = repo
    _row(catalog, ID, CREATED, finished_at=utcnow(), task_id="not-sent-yet")
    assert sweep(settings, catalog, lambda _task: False) == []
    later = utcnow() + CREATED_GRACE + timedelta(seconds=1)
    assert [s.backup_id for s in sweep(settings, catalog, lambda _t: False, now=later)] == [ID]


def test_another_host_s_backups_are_left_to_that_host_until_the_time_limit(repo) -> None:
    settings, catalog = repo
    _row(catalog, ID, RUNNING, host="other-host", created_at=utcnow() - timedelta(minutes=5))
    _row(catalog, OTHER, RUNNING, host="other-host", created_at=utcnow() - timedelta(days=1))
    swept = sweep(settings, catalog, lambda _task: False)
    assert [s.backup_id for s in swept] == [OTHER]
    assert catalog.get(ID).status == RUNNING
    assert "other-host" in (catalog.get(OTHER).error or "")


def test_verified_backups_and_their_files_are_untouched(repo) -> None:
    settings, catalog = repo
    folder = settings.backup_root / "json"
    _row(catalog, ID, VERIFIED)
    (folder / f"{ID}.tar.zst").write_bytes(b"archive")
    (folder / f"{ID}.manifest.json").write_text("{}")
    assert sweep(settings, catalog, lambda _task: False) == []
    assert len(_files(settings)) == 2
    assert not list((settings.backup_root / ".state" / "leases").iterdir())  # no lock file left


def test_a_created_backup_whose_verify_failed_is_resolved_without_waiting(repo) -> None:
    settings, catalog = repo
    _row(catalog, ID, CREATED, finished_at=utcnow(), task_id="verify-failed")
    swept = sweep(settings, catalog, lambda _t: False, ended={"verify-failed"}.__contains__)
    assert [(s.backup_id, s.failed) for s in swept] == [(ID, CHAIN_LOST)]
