"""Archived and streamed WAL off-site, both ways, on a moto S3 server over HTTP.

Uploads: finished files once, the stream's unfinished segment replaced as it grows and removed
once finished, an interrupted run resumed, an unreachable bucket a clear error that leaves the
local archive alone, the lag `status` shows. Remote retention: the local rule applied to the
bucket. And a total loss: a fresh repository with nothing but the bucket and the key recovers
to latest with `restore pitr --from offsite`; a WAL object damaged in the bucket is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from lifeos_backup.core.errors import OffsiteError, VerificationFailed
from lifeos_backup.core.settings import Settings, get_settings
from lifeos_backup.formats.crypto import generate_identity
from lifeos_backup.formats.manifest import manifest_path, read_manifest
from lifeos_backup.jobs.backups import create_backup, verify_backup
from lifeos_backup.kinds.basebackup import offsite_wal
from lifeos_backup.kinds.basebackup.health import wal_archive_status
from lifeos_backup.kinds.basebackup.offsite_wal import (
    offsite_lag,
    prune_remote_wal,
    upload_wal,
)
from lifeos_backup.kinds.basebackup.restore import RecoveryTarget, offsite_wal_dir, restore_pitr
from lifeos_backup.storage.catalog.store import DELETED
from lifeos_backup.storage.offsite.download import rebuild_from_offsite
from lifeos_backup.storage.offsite.upload import upload_backup
from lifeos_backup.wal.archive import SUFFIX, push, store_partial
from tests.support.pitr import ArchivingCluster, start_archiving_cluster, stop_restored
from tests.support.s3 import Bucket, closed_port_url
from tests.support.services import free_port
from tests.support.worker import LifeosEnv

pytestmark = pytest.mark.integration

SEG1, SEG2, SEG3 = (f"0000000100000000000000{n:02X}" for n in (1, 2, 3))


def remote(bucket: Bucket) -> dict[str, bytes]:
    folder = f"{bucket.prefix}/postgresql/wal/"
    return {k[len(folder) :]: bucket.get(k) for k in bucket.keys() if k.startswith(folder)}  # noqa: SIM118


def wal_file(folder: Path, name: str, content: bytes) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(content)
    return path


def test_partial_is_replaced_as_it_grows_then_gives_way_to_the_segment(
    s3_bucket: Bucket, lifeos_env: LifeosEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, spool = tmp_path / "wal", tmp_path / "spool"
    lifeos_env.set(LIFEOS_WAL_ARCHIVE_DIR=str(archive))
    push(wal_file(spool, SEG1, b"one" * 5000), archive)
    store_partial(wal_file(spool, SEG2 + ".partial", b"a" * 100 + b"\0" * 900), archive)
    partial = f"{SEG2}.partial{SUFFIX}"

    assert upload_wal(get_settings()) == [f"{SEG1}{SUFFIX}", partial]
    store_partial(wal_file(spool, SEG2 + ".partial", b"a" * 600 + b"\0" * 400), archive)
    assert upload_wal(get_settings()) == [partial]  # grown: replaced
    assert remote(s3_bucket)[partial] == (archive / partial).read_bytes()
    assert upload_wal(get_settings()) == []  # unchanged: not sent again
    lag = offsite_lag(get_settings())
    assert lag is not None and lag["lag_s"] == 0 and lag["pending_files"] == 0

    push(wal_file(spool, SEG2, b"a" * 1000), archive)  # the segment is finished
    (archive / partial).unlink()
    assert upload_wal(get_settings()) == [f"{SEG2}{SUFFIX}"]
    assert sorted(remote(s3_bucket)) == [f"{SEG1}{SUFFIX}", f"{SEG2}{SUFFIX}"]  # partial gone

    # An upload interrupted after its first file resumes where it stopped.
    push(wal_file(spool, SEG3, b"three" * 300), archive)
    store_partial(wal_file(spool, "000000010000000000000004.partial", b"x" * 10), archive)
    history = "00000002.history"
    push(wal_file(spool, history, b"1\t0/3000000\tno recovery target specified\n"), archive)
    real_put, calls = offsite_wal._put, []

    def failing_put(*args: object) -> None:
        calls.append(args)
        if len(calls) == 2:
            raise OffsiteError("uploading: off-site storage unreachable")
        real_put(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(offsite_wal, "_put", failing_put)
    with pytest.raises(OffsiteError):
        upload_wal(get_settings())
    monkeypatch.setattr(offsite_wal, "_put", real_put)
    assert len(remote(s3_bucket)) == 3  # the first new file only; no partial past a hole
    status = wal_archive_status(get_settings())
    assert status["offsite"]["pending_files"] >= 2 and status["offsite"]["lag_s"] >= 0
    sent = upload_wal(get_settings())
    assert len(sent) == 2 and sent[-1] == f"000000010000000000000004.partial{SUFFIX}"
    assert {n: b for n, b in remote(s3_bucket).items()} == {
        p.name: p.read_bytes() for p in archive.glob(f"*{SUFFIX}")
    }


def test_an_unreachable_bucket_is_a_clear_error_and_archiving_goes_on(
    s3_bucket: Bucket, lifeos_env: LifeosEnv, tmp_path: Path
) -> None:
    archive, spool = tmp_path / "wal", tmp_path / "spool"
    lifeos_env.set(LIFEOS_WAL_ARCHIVE_DIR=str(archive), LIFEOS_S3_ENDPOINT_URL=closed_port_url())
    push(wal_file(spool, SEG1, b"one" * 5000), archive)
    with pytest.raises(OffsiteError, match="unreachable"):
        upload_wal(get_settings())
    push(wal_file(spool, SEG2, b"two" * 5000), archive)  # local archiving does not depend on it
    assert sorted(p.name for p in archive.glob(f"*{SUFFIX}")) == [
        f"{SEG1}{SUFFIX}",
        f"{SEG2}{SUFFIX}",
    ]
    assert s3_bucket.keys() == []


# --------------------------------------------------------------------------- with PostgreSQL


def sql(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else []


def switch_and_wait(url: str, timeout: float = 60) -> None:
    sql(url, "SELECT pg_logical_emit_message(false, 'lifeos-test', 'switch')")
    ((segment,),) = sql(url, "SELECT pg_walfile_name(pg_switch_wal() - 1)")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ((last,),) = sql(url, "SELECT last_archived_wal FROM pg_stat_archiver")
        if last is not None and str(last) >= str(segment):
            return
        time.sleep(0.05)
    raise AssertionError(f"segment {segment} not archived in {timeout} s")


def server_key(archiving: ArchivingCluster, identity: str) -> Path:
    """The private key where the server's OS user can read it (restore_command opens it)."""
    path = archiving.base / "backup.key"
    path.write_text(f"# test key\n{identity}\n")
    path.chmod(0o600)
    owner = archiving.base.stat()
    os.chown(path, owner.st_uid, owner.st_gid)
    return path


def start_of(settings: Settings, catalog: Any, backup_id: str) -> str:
    row = catalog.get(backup_id)
    manifest = read_manifest(manifest_path(settings.backup_root / row.path, backup_id))
    return str(manifest.facts["start_wal_file"])


def fresh_repository(lifeos_env: LifeosEnv, tmp_path: Path, **values: str) -> Settings:
    """A second, empty backup root and WAL archive: the machine has only the bucket and key."""
    root = tmp_path / "fresh"
    root.mkdir()
    lifeos_env.set(
        LIFEOS_BACKUP_ROOT=str(root / "backups"),
        LIFEOS_WAL_ARCHIVE_DIR=str(root / "no-archive"),
        **values,
    )
    return get_settings()


def test_restore_pitr_from_offsite_on_a_fresh_repository(
    s3_bucket: Bucket, lifeos_env: LifeosEnv, tmp_path: Path
) -> None:
    identity, recipient = generate_identity()
    archiving = start_archiving_cluster(archive_timeout=1, recipients=recipient)
    try:
        url = archiving.cluster.url()
        lifeos_env.set(
            LIFEOS_DATABASE_URL=url,
            LIFEOS_WAL_ARCHIVE_DIR=str(archiving.archive),
            LIFEOS_PG_BIN_DIR=str(archiving.cluster.bindir),
            LIFEOS_ENCRYPTION_RECIPIENTS=recipient,
        )
        settings, catalog = get_settings(), lifeos_env.catalog()
        sql(url, "CREATE TABLE events (id int PRIMARY KEY)")
        old = create_backup("basebackup", settings, catalog).backup_id
        verify_backup(old, settings, catalog)
        switch_and_wait(url)
        time.sleep(1.1)  # backup ids are per second
        new = create_backup("basebackup", settings, catalog).backup_id
        verify_backup(new, settings, catalog)
        for backup_id in (old, new):
            assert upload_backup(backup_id, settings, catalog) is not None
        sql(url, "INSERT INTO events SELECT generate_series(1, 25)")
        switch_and_wait(url)
        sql(url, "INSERT INTO events SELECT generate_series(26, 30)")
        switch_and_wait(url)
        upload_wal(settings)

        # Remote retention: what no kept base backup (local or off-site) needs, history aside.
        start = {b: start_of(settings, catalog, b) for b in (old, new)}
        assert all(n[8:24] < start[old][8:24] for n in prune_remote_wal(settings, catalog))
        catalog.update(old, status=DELETED, offsite_status="deleted")
        pruned = prune_remote_wal(settings, catalog)
        assert pruned and all(start[old][8:24] <= n[8:24] < start[new][8:24] for n in pruned)
        left = [n for n in remote(s3_bucket) if ".history" not in n]
        assert left and all(n[8:24] >= start[new][8:24] for n in left)

        key = server_key(archiving, identity)
        fresh = fresh_repository(
            lifeos_env, tmp_path, LIFEOS_ENCRYPTION_IDENTITY_FILE=str(key)
        )
        fresh_catalog = lifeos_env.catalog()
        assert new in rebuild_from_offsite(fresh, fresh_catalog)

        # A WAL object damaged in the bucket is refused before anything is laid out.
        folder = f"{s3_bucket.prefix}/postgresql/wal/"
        keys = s3_bucket.keys()
        victim = next(k for k in keys if k.startswith(folder) and "history" not in k)
        good = s3_bucket.get(victim)
        s3_bucket.client.put_object(
            Bucket=s3_bucket.name, Key=victim, Body=good[:-40] + b"\0" * 40
        )
        refused = archiving.base / "restores" / "refused"
        with pytest.raises(VerificationFailed, match="damaged"):
            restore_pitr(fresh, fresh_catalog, RecoveryTarget(), refused, source="offsite")
        assert not refused.exists() and not offsite_wal_dir(refused).exists()
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=victim, Body=good)

        datadir = archiving.base / "restores" / "from-offsite"
        port = free_port()
        try:
            result = restore_pitr(
                fresh, fresh_catalog, RecoveryTarget(), datadir, port=port, start=True,
                wal_command=archiving.wal_command, socket_dir=archiving.cluster.socketdir,
                timeout=120, source="offsite",
            )  # fmt: skip
            assert result.started and result.backup_id == new
            restored = f"postgresql://postgres@127.0.0.1:{port}/postgres"
            assert sql(restored, "SELECT count(*), max(id) FROM events") == [(30, 30)]
            assert not offsite_wal_dir(datadir).exists()  # downloaded WAL removed after recovery
        finally:
            stop_restored(archiving.cluster, datadir)
            shutil.rmtree(datadir, ignore_errors=True)
        assert list(fresh.state_dir.glob("offsite-*")) == []  # the download is gone too
    finally:
        archiving.stop()


def test_wal_goes_to_every_target_and_one_down_holds_back_none_of_the_others(
    lifeos_env: LifeosEnv,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """Only LIFEOS_OFFSITE_TARGETS: an S3 (moto) and a GCS (emulator) target."""
    from tests.integration.test_offsite import setenv
    from tests.integration.test_offsite_targets import configure
    from tests.support.emulators import RemoteBucket, gcs_bucket
    from tests.support.emulators import s3_bucket as listed_s3_bucket

    s3 = listed_s3_bucket(request.getfixturevalue("moto_server"), "s3-eu")
    gcs = gcs_bucket(request.getfixturevalue("gcs_emulator"))
    configure(lifeos_env, monkeypatch, [s3, gcs])
    archive, spool = tmp_path / "wal", tmp_path / "spool"
    setenv(lifeos_env, monkeypatch, LIFEOS_WAL_ARCHIVE_DIR=str(archive))
    one, two = f"{SEG1}{SUFFIX}", f"{SEG2}{SUFFIX}"

    def held(bucket: RemoteBucket) -> list[str]:
        folder = f"{bucket.prefix}/postgresql/wal/"
        return [n[len(folder) :] for n in bucket.names() if n.startswith(folder)]

    push(wal_file(spool, SEG1, b"one" * 5000), archive)
    assert upload_wal(get_settings()) == [one]
    assert held(s3) == held(gcs) == [one]

    # The S3 target is down: GCS still gets the next segment; the error names S3.
    targets = json.loads(lifeos_env.vars["LIFEOS_OFFSITE_TARGETS"])
    working = targets[0]["endpoint"]
    targets[0]["endpoint"] = closed_port_url()
    setenv(lifeos_env, monkeypatch, LIFEOS_OFFSITE_TARGETS=json.dumps(targets))
    push(wal_file(spool, SEG2, b"two" * 5000), archive)
    with pytest.raises(OffsiteError, match="s3-eu") as caught:
        upload_wal(get_settings())
    assert "gcs-eu" not in str(caught.value)
    assert held(s3) == [one] and held(gcs) == [one, two]
    lag = offsite_lag(get_settings())
    assert lag is not None and lag["pending_files"] == 1  # the worst target's
    assert lag["targets"]["s3-eu"]["pending_files"] == 1 and lag["targets"]["s3-eu"]["error"]
    assert lag["targets"]["gcs-eu"] == {"lag_s": 0.0, "pending_files": 0, "error": None}

    # Recovery reads the target holding the start segment and the most after it.
    dest = tmp_path / "fetched"
    dest.mkdir()
    assert offsite_wal.download_wal(get_settings(), dest, SEG1) == [one, two]
    assert (dest / two).read_bytes() == (archive / two).read_bytes()

    # S3 is back: it gets only what it lacks; pruning runs on both.
    targets[0]["endpoint"] = working
    setenv(lifeos_env, monkeypatch, LIFEOS_OFFSITE_TARGETS=json.dumps(targets))
    assert upload_wal(get_settings()) == [two]
    assert held(s3) == held(gcs) == [one, two]
    lag = offsite_lag(get_settings())
    assert lag is not None and lag["pending_files"] == 0
    monkeypatch.setattr(offsite_wal, "remote_cutoff", lambda _settings, _catalog: SEG2)
    assert prune_remote_wal(get_settings(), lifeos_env.catalog()) == [one]
    assert held(s3) == held(gcs) == [two]
