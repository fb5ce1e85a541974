"""Point-in-time recovery end to end, on a throwaway cluster that archives through our command.

Base backup (create -> verify), rows at T1, rows at T2, everything deleted at T3; restores to a
moment between T1 and T2 and to one just before T3 must show exactly the rows committed by then.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from lifeos_backup.core.errors import DecryptionKeyError
from lifeos_backup.core.settings import Settings, get_settings
from lifeos_backup.formats.crypto import fingerprint, generate_identity
from lifeos_backup.formats.manifest import manifest_path, read_manifest
from lifeos_backup.jobs.backups import create_backup, rotate, verify_backup
from lifeos_backup.kinds.basebackup.backup import required_segments
from lifeos_backup.kinds.basebackup.health import wal_archive_status
from lifeos_backup.kinds.basebackup.offsite_wal import upload_wal
from lifeos_backup.kinds.basebackup.restore import RecoveryTarget, restore_pitr
from lifeos_backup.storage.catalog import Catalog, open_catalog
from lifeos_backup.storage.catalog.store import DELETED, VERIFIED
from lifeos_backup.wal.archive import SUFFIX, header_of, push
from tests.support.pitr import ArchivingCluster, start_archiving_cluster, stop_restored
from tests.support.s3 import Bucket
from tests.support.services import free_port
from tests.support.worker import LifeosEnv

pytestmark = pytest.mark.integration


@pytest.fixture
def archiving() -> Iterator[ArchivingCluster]:
    cluster = start_archiving_cluster(archive_timeout=1)
    yield cluster
    cluster.stop()


def configure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, archiving: ArchivingCluster, **extra: str
) -> Settings:
    """LIFEOS_* of a test against `archiving` (and nothing from the outside environment)."""
    for key in [k for k in os.environ if k.startswith("LIFEOS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LIFEOS_BACKUP_ROOT", str(tmp_path / "backups"))
    monkeypatch.setenv("LIFEOS_WAL_ARCHIVE_DIR", str(archiving.archive))
    monkeypatch.setenv("LIFEOS_DATABASE_URL", archiving.cluster.url())
    for key, value in extra.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture
def settings(
    archiving: ArchivingCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    yield configure(monkeypatch, tmp_path, archiving)
    get_settings.cache_clear()


@pytest.fixture
def catalog(settings: Settings) -> Catalog:
    return open_catalog(settings.effective_catalog_url)


def sql(url: str, query: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params or None)
        return cur.fetchall() if cur.description else []


def switch_and_wait(url: str, timeout: float = 30) -> str:
    """Close the current segment and wait until the archiver has stored it."""
    # An empty segment is not switched (pg_switch_wal then names the next, unarchived one):
    # write a WAL record that changes no data first.
    sql(url, "SELECT pg_logical_emit_message(false, 'lifeos-test', 'switch')")
    (segment,) = sql(url, "SELECT pg_walfile_name(pg_switch_wal() - 1)")[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ((last, failed),) = sql(url, "SELECT last_archived_wal, failed_count FROM pg_stat_archiver")
        if last is not None and str(last) >= str(segment):
            return str(segment)
        time.sleep(0.05)
    raise AssertionError(f"segment {segment} not archived in {timeout}s (failures: {failed})")


def take_base_backup(settings: Settings, catalog: Catalog) -> str:
    manifest = create_backup("basebackup", settings, catalog, reason="test")
    verify_backup(manifest.backup_id, settings, catalog)
    assert catalog.get(manifest.backup_id).status == VERIFIED
    return manifest.backup_id


def restore_and_read(
    archiving: ArchivingCluster, settings: Settings, catalog: Catalog, when: datetime, name: str
) -> tuple[list[tuple[object, ...]], str | None]:
    """Restore to `when` into a new data directory, start it, return table rows and reached time."""
    datadir = archiving.base / "restores" / name
    port = free_port()
    try:
        result = restore_pitr(
            settings,
            catalog,
            RecoveryTarget(time=when),
            datadir,
            port=port,
            start=True,
            wal_command=archiving.wal_command,
            socket_dir=archiving.cluster.socketdir,
            timeout=120,
        )
        assert result.started and result.stop_line, result
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        assert sql(url, "SELECT pg_is_in_recovery()") == [(False,)]
        rows = sql(url, "SELECT id, phase FROM events ORDER BY id")
        return rows, result.reached_time
    finally:
        stop_restored(archiving.cluster, datadir)


def test_restore_to_a_moment_between_commits(
    archiving: ArchivingCluster, settings: Settings, catalog: Catalog
) -> None:
    url = archiving.cluster.url()
    sql(url, "CREATE TABLE events (id int PRIMARY KEY, phase text NOT NULL)")
    backup_id = take_base_backup(settings, catalog)

    sql(url, "INSERT INTO events SELECT g, 'T1' FROM generate_series(1, 5) g")
    (between_1_2,) = sql(url, "SELECT clock_timestamp()")[0]
    time.sleep(0.05)
    sql(url, "INSERT INTO events SELECT g, 'T2' FROM generate_series(6, 8) g")
    (before_3,) = sql(url, "SELECT clock_timestamp()")[0]
    time.sleep(0.05)
    sql(url, "DELETE FROM events")
    switch_and_wait(url)
    assert isinstance(between_1_2, datetime) and isinstance(before_3, datetime)

    rows, reached = restore_and_read(archiving, settings, catalog, between_1_2, "t1")
    assert rows == [(i, "T1") for i in range(1, 6)]
    assert reached is not None and datetime.fromisoformat(reached) <= between_1_2

    rows, reached = restore_and_read(archiving, settings, catalog, before_3, "t2")
    assert rows == [(i, "T1") for i in range(1, 6)] + [(i, "T2") for i in range(6, 9)]
    assert reached is not None and between_1_2 < datetime.fromisoformat(reached) <= before_3

    status = wal_archive_status(settings)
    assert status["segments"] >= 3 and status["failures_total"] == 0
    assert status["age_seconds"] is not None and status["age_seconds"] < 60
    assert status["last_push"]["name"] <= status["newest_segment"] + "~"
    assert backup_id.startswith("base_backup_")


def test_a_target_before_every_base_backup_is_refused(
    archiving: ArchivingCluster, settings: Settings, catalog: Catalog
) -> None:
    (before,) = sql(archiving.cluster.url(), "SELECT clock_timestamp()")[0]
    take_base_backup(settings, catalog)
    assert isinstance(before, datetime)
    with pytest.raises(Exception, match="no verified base backup ends before"):
        restore_pitr(settings, catalog, RecoveryTarget(time=before), archiving.base / "r0")
    assert not (archiving.base / "r0").exists()


def test_verify_fails_when_a_needed_segment_is_missing(
    archiving: ArchivingCluster, settings: Settings, catalog: Catalog
) -> None:
    manifest = create_backup("basebackup", settings, catalog)
    needed = required_segments(manifest.facts)
    (archiving.archive / f"{needed[0]}{SUFFIX}").unlink()
    with pytest.raises(Exception, match=f"needs WAL segment {needed[0]}"):
        verify_backup(manifest.backup_id, settings, catalog)
    assert catalog.get(manifest.backup_id).status != VERIFIED


def test_retention_keeps_every_segment_a_kept_base_backup_needs(
    archiving: ArchivingCluster,
    settings: Settings,
    catalog: Catalog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = archiving.cluster.url()
    old = take_base_backup(settings, catalog)
    for _ in range(3):
        sql(url, "CREATE TABLE IF NOT EXISTS filler (x int); INSERT INTO filler VALUES (1)")
        switch_and_wait(url)
    time.sleep(1.1)  # ids are per second
    new = take_base_backup(settings, catalog)
    switch_and_wait(url)
    before = sorted(p.name for p in archiving.archive.glob(f"*{SUFFIX}"))

    monkeypatch.setenv("LIFEOS_RETENTION_BASEBACKUP", "last=1")
    get_settings.cache_clear()
    result = rotate("basebackup", get_settings(), catalog)

    assert [d.id for d in result.plan.delete] == [old]
    assert catalog.get(old).status == DELETED
    new_manifest = verify_backup(new, get_settings(), catalog)  # its WAL is all still there
    start = new_manifest.facts["start_wal_file"]
    after = sorted(p.name for p in archiving.archive.glob(f"*{SUFFIX}"))
    removed = sorted(set(before) - set(after))
    assert removed, "older WAL should have been removed"
    assert all(name[8:24] < start[8:24] for name in removed)
    assert all(name in after for name in before if name[8:24] >= start[8:24] or ".history" in name)
    for name in required_segments(new_manifest.facts):
        assert f"{name}{SUFFIX}" in after


def test_backup_refuses_a_server_without_archiving(
    pg_cluster: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("LIFEOS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LIFEOS_BACKUP_ROOT", str(tmp_path / "backups"))
    monkeypatch.setenv("LIFEOS_DATABASE_URL", pg_cluster.url())  # type: ignore[attr-defined]
    get_settings.cache_clear()
    try:
        s = get_settings()
        cat = open_catalog(s.effective_catalog_url)
        with pytest.raises(Exception, match="WAL archiving is off"):
            create_backup("basebackup", s, cat)
        assert not list((tmp_path / "backups" / "postgresql" / "base").glob("base_backup_*"))
    finally:
        get_settings.cache_clear()


def test_wal_push_from_the_live_server_never_fails(archiving: ArchivingCluster) -> None:
    url = archiving.cluster.url()
    for _ in range(2):
        switch_and_wait(url)
    ((failed,),) = sql(url, "SELECT failed_count FROM pg_stat_archiver")
    assert failed == 0
    log = subprocess.run(["tail", "-n", "50", str(archiving.cluster.logfile)],
                         capture_output=True, text=True, check=False).stdout  # fmt: skip
    assert "archive command failed" not in log


def test_archived_wal_is_copied_offsite_once(
    s3_bucket: Bucket, lifeos_env: LifeosEnv, tmp_path: Path
) -> None:
    archive = tmp_path / "wal"
    lifeos_env.set(LIFEOS_WAL_ARCHIVE_DIR=str(archive))
    names = ["000000010000000000000001", "000000010000000000000002", "00000002.history"]
    recipient = generate_identity()[1]
    for name in names:
        (tmp_path / "pg_wal").mkdir(exist_ok=True)
        (tmp_path / "pg_wal" / name).write_bytes(name.encode() * 1000)
        sealed = name.endswith("2")  # a sealed segment goes off-site as it is, sealed
        push(tmp_path / "pg_wal" / name, archive, recipients=recipient if sealed else None)

    sent = upload_wal(get_settings())

    assert sorted(sent) == sorted(f"{n}{SUFFIX}" for n in names)
    assert header_of(archive / f"{names[1]}{SUFFIX}").sealed
    for name in sent:
        key = f"{s3_bucket.prefix}/postgresql/wal/{name}"
        assert s3_bucket.get(key) == (archive / name).read_bytes()
    assert upload_wal(get_settings()) == []  # nothing new: nothing sent


def test_backup_basebackup_runs_the_chain_on_a_worker(
    archiving: ArchivingCluster,
    lifeos_env: LifeosEnv,
    start_worker: Callable[..., object],
) -> None:
    lifeos_env.set(
        LIFEOS_DATABASE_URL=archiving.cluster.url(),
        LIFEOS_WAL_ARCHIVE_DIR=str(archiving.archive),
    )
    start_worker()
    exe = Path(sys.executable).parent / "lifeos-backup"
    done = subprocess.run(
        [str(exe), "backup", "basebackup", "--wait", "--timeout", "120"],
        env=lifeos_env.subprocess_env(), capture_output=True, text=True, timeout=180,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    backup_id = done.stdout.strip().splitlines()[-1]
    assert backup_id.startswith("base_backup_")
    row = lifeos_env.catalog().get(backup_id)
    assert row.status == VERIFIED and row.path.startswith("postgresql/base/")


def server_key(archiving: ArchivingCluster, name: str, identity: str) -> Path:
    """An identity file (0600) owned by the server's OS user, which reads it in restore_command."""
    path = archiving.base / name
    path.write_text(f"# test key\n{identity}\n")
    path.chmod(0o600)
    owner = archiving.base.stat()
    os.chown(path, owner.st_uid, owner.st_gid)
    return path


def test_encrypted_base_backup_and_wal_restore_only_with_the_right_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity, recipient = generate_identity()
    archiving = start_archiving_cluster(archive_timeout=1, recipients=recipient)
    try:
        key = server_key(archiving, "backup.key", identity)
        wrong = server_key(archiving, "wrong.key", generate_identity()[0])
        settings = configure(
            monkeypatch, tmp_path, archiving, LIFEOS_ENCRYPTION_RECIPIENTS=recipient
        )  # no identity: like a backup host, which holds only the public key
        catalog = open_catalog(settings.effective_catalog_url)
        url = archiving.cluster.url()
        sql(url, "CREATE TABLE events (id int PRIMARY KEY, phase text NOT NULL)")
        backup_id = take_base_backup(settings, catalog)  # verified without the key

        row = catalog.get(backup_id)
        archive = settings.backup_root / row.path
        manifest = read_manifest(manifest_path(archive, backup_id))
        assert archive.name.endswith(".tar.zst.age")
        assert manifest.encryption is not None
        assert manifest.encryption.recipients == [fingerprint(recipient)]
        assert manifest.verified_scope == "ciphertext"
        head = archive.read_bytes()[:64]
        assert head.startswith(b"age-encryption.org/v1\n") and b"\x28\xb5\x2f\xfd" not in head

        sql(url, "INSERT INTO events SELECT g, 'T1' FROM generate_series(1, 5) g")
        (between,) = sql(url, "SELECT clock_timestamp()")[0]
        time.sleep(0.05)
        sql(url, "INSERT INTO events SELECT g, 'T2' FROM generate_series(6, 8) g")
        switch_and_wait(url)
        segments = [p for p in archiving.archive.glob(f"*{SUFFIX}") if ".history" not in p.name]
        assert len(segments) >= 2 and all(header_of(p).sealed for p in segments)
        assert isinstance(between, datetime)

        target = RecoveryTarget(time=between)
        for identity_file, said in ((None, "no private key"), (wrong, "not one of its recipients")):
            values = {"LIFEOS_ENCRYPTION_IDENTITY_FILE": str(wrong)} if identity_file else {}
            settings = configure(monkeypatch, tmp_path, archiving, **values)
            with pytest.raises(DecryptionKeyError, match=said):
                restore_pitr(settings, catalog, target, archiving.base / "restores" / "refused")
            assert not (archiving.base / "restores" / "refused").exists()

        settings = configure(
            monkeypatch, tmp_path, archiving, LIFEOS_ENCRYPTION_IDENTITY_FILE=str(key)
        )
        assert verify_backup(backup_id, settings, catalog).verified_scope == "content"
        rows, reached = restore_and_read(archiving, settings, catalog, between, "sealed")
        assert rows == [(i, "T1") for i in range(1, 6)]
        assert reached is not None and datetime.fromisoformat(reached) <= between
    finally:
        archiving.stop()
        get_settings.cache_clear()
