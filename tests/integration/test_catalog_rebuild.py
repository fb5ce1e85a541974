"""`catalog rebuild` tells the truth, and a lost or corrupt catalog comes back while workers run.

The CLI runs in a subprocess and the worker is a real Celery worker, as an operator would meet
them; backups for the other tests are made in-process (the same functions the tasks call).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lifeos_backup.app.client import make_app, request_backup
from lifeos_backup.jobs.backups import create_backup, verify_backup
from lifeos_backup.jobs.leases import lease
from lifeos_backup.storage.offsite.upload import upload_backup
from tests.support.s3 import Bucket
from tests.support.trees import make_tree
from tests.support.worker import LifeosEnv, WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
CLI = str(Path(sys.executable).parent / "lifeos-backup")


def cli(env: LifeosEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env=env.subprocess_env(), capture_output=True, text=True, timeout=90
    )


def listed(env: LifeosEnv) -> dict[str, dict[str, Any]]:
    result = cli(env, "list", "--json")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return {row["id"]: row for row in json.loads(result.stdout)}


def rebuild(env: LifeosEnv, *extra: str) -> subprocess.CompletedProcess[str]:
    result = cli(env, "catalog", "rebuild", *extra)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def good_backups(env: LifeosEnv, count: int) -> list[str]:
    settings, catalog = env.settings(), env.catalog()
    ids = []
    for _ in range(count):  # one id per second: create_backup waits for the next one
        ids.append(create_backup("json", settings, catalog).backup_id)
        verify_backup(ids[-1], settings, catalog)
    return ids


def pointer(env: LifeosEnv) -> Path:
    return env.backup_root / "catalog.sqlite3"


def folder(env: LifeosEnv) -> Path:
    return env.backup_root / "json"


def manifest_of(env: LifeosEnv, backup_id: str) -> Path:
    return folder(env) / f"{backup_id}.manifest.json"


def archive_of(env: LifeosEnv, backup_id: str) -> Path:
    return folder(env) / f"{backup_id}.tar.zst"


def warnings(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("warning:")]


# ----------------------------------------------------------------------------- the truth


def damage(env: LifeosEnv, flipped: str, truncated: str, wrong_hash: str) -> None:
    """A flipped byte, a truncation, and a manifest whose archive hash is wrong."""
    data = bytearray(archive_of(env, flipped).read_bytes())
    data[len(data) // 2] ^= 0x01
    archive_of(env, flipped).write_bytes(bytes(data))
    whole = archive_of(env, truncated).read_bytes()
    archive_of(env, truncated).write_bytes(whole[: len(whole) // 2])
    document = json.loads(manifest_of(env, wrong_hash).read_text())
    document["archive"]["sha256"] = "0" * 64
    manifest_of(env, wrong_hash).write_text(json.dumps(document))


def test_damaged_backups_stay_failed_after_the_catalog_is_deleted_and_rebuilt(
    lifeos_env: LifeosEnv,
) -> None:
    make_tree(lifeos_env.app_dir, files=12)
    good, *damaged = good_backups(lifeos_env, 4)
    damage(lifeos_env, *damaged)
    for backup_id in damaged:
        checked = cli(lifeos_env, "verify", backup_id)
        assert checked.returncode == 1 and checked.stderr.startswith("error: ")
    assert {i: r["status"] for i, r in listed(lifeos_env).items() if i in damaged} == dict.fromkeys(
        damaged, "failed"
    )

    pointer(lifeos_env).unlink()
    result = rebuild(lifeos_env)
    assert "4 backups found (3 failed, 1 verified)" in result.stdout
    rows = listed(lifeos_env)
    assert {i: r["status"] for i, r in rows.items()} == {
        good: "verified",
        **dict.fromkeys(damaged, "failed"),
    }
    assert all(rows[i]["error"] and rows[i]["verified_at"] is None for i in damaged)

    pointer(lifeos_env).unlink()
    trusted = rebuild(lifeos_env, "--trust-manifests")
    assert "4 backups found (4 unverified)" in trusted.stdout
    assert {r["status"] for r in listed(lifeos_env).values()} == {"unverified"}


def test_a_lost_manifest_is_incomplete_and_a_lost_archive_failed(lifeos_env: LifeosEnv) -> None:
    make_tree(lifeos_env.app_dir, files=6)
    no_manifest, no_archive, neither, good = good_backups(lifeos_env, 4)
    manifest_of(lifeos_env, no_manifest).unlink()
    manifest_of(lifeos_env, neither).unlink()
    archive_of(lifeos_env, neither).unlink()
    archive_of(lifeos_env, no_archive).unlink()
    size = archive_of(lifeos_env, no_manifest).stat().st_size

    in_place = rebuild(lifeos_env)
    assert "1 backups lost both files: marked failed" in in_place.stdout
    rows = listed(lifeos_env)
    assert {i: r["status"] for i, r in rows.items()} == {
        no_manifest: "incomplete",
        no_archive: "failed",
        neither: "failed",
        good: "verified",
    }
    assert "archive missing" in rows[no_archive]["error"]
    assert "manifest and archive missing" in rows[neither]["error"]

    pointer(lifeos_env).unlink()  # from nothing but the files: nothing there is dropped
    rebuild(lifeos_env)
    rows = listed(lifeos_env)
    assert {i: r["status"] for i, r in rows.items()} == {
        no_manifest: "incomplete",
        no_archive: "failed",
        good: "verified",
    }
    incomplete = rows[no_manifest]
    assert incomplete["path"] == str(archive_of(lifeos_env, no_manifest))
    assert incomplete["size"] == size and incomplete["location"] == "local"
    stamp = no_manifest.removeprefix("json_backup_")
    assert incomplete["created_at"].startswith(
        f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}"
    )
    status = cli(lifeos_env, "status", "--json")
    conditions = {c["key"]: c for c in json.loads(status.stdout)["conditions"]}
    assert "lifeos-backup verify" in conditions["unproven_backups:json"]["hint"]


def test_hostile_and_broken_manifests_are_reported_and_skipped(lifeos_env: LifeosEnv) -> None:
    make_tree(lifeos_env.app_dir, files=6)
    first, second = good_backups(lifeos_env, 2)
    genuine = json.loads(manifest_of(lifeos_env, first).read_text())
    fake = [f"json_backup_2020010{n}_000000" for n in range(1, 5)]
    escaping = {**genuine, "backup_id": fake[0]}
    escaping["archive"] = {**genuine["archive"], "name": "../../../../../etc/passwd"}
    manifest_of(lifeos_env, fake[0]).write_text(json.dumps(escaping))
    manifest_of(lifeos_env, fake[1]).write_text(
        json.dumps({**genuine, "backup_id": "json_backup_../../../x"})
    )
    manifest_of(lifeos_env, fake[2]).write_text("{not json")
    manifest_of(lifeos_env, fake[3]).write_text(json.dumps(genuine))  # names another backup

    pointer(lifeos_env).unlink()
    result = rebuild(lifeos_env)
    lines = warnings(result)
    assert len(lines) == 4, result.stderr
    for name, line in zip(fake, lines, strict=True):
        assert f"{name}.manifest.json" in line
    assert "../../../../../etc/passwd" in lines[0] and "describes " + first in lines[3]
    assert "skipped: 4 invalid manifests" in result.stdout
    assert "2 backups found (2 verified)" in result.stdout
    rows = listed(lifeos_env)
    assert sorted(rows) == sorted([first, second])
    assert not any("/" in i or ".." in i for i in rows)


def test_restore_refuses_a_manifest_whose_id_would_stage_outside_the_target(
    lifeos_env: LifeosEnv, tmp_path: Path
) -> None:
    make_tree(lifeos_env.app_dir, files=6)
    [backup_id] = good_backups(lifeos_env, 1)
    document = json.loads(manifest_of(lifeos_env, backup_id).read_text())
    document["backup_id"] = "x/../../../outside/STAGED"  # the archive hash is still its own
    manifest_of(lifeos_env, backup_id).write_text(json.dumps(document))
    target = tmp_path / "restore" / "a" / "b" / "target"
    before = {p for p in tmp_path.rglob("*") if lifeos_env.backup_root not in p.parents}

    result = cli(lifeos_env, "restore", "json", backup_id, "--target", str(target))
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "is not a backup id" in result.stderr and "Traceback" not in result.stderr
    after = {p for p in tmp_path.rglob("*") if lifeos_env.backup_root not in p.parents}
    assert after == before  # nothing staged anywhere, inside or outside the target
    assert not any("STAGED" in p.name or p.name == "outside" for p in tmp_path.rglob("*"))


def test_a_busy_backup_is_left_as_it_is_and_named(lifeos_env: LifeosEnv) -> None:
    make_tree(lifeos_env.app_dir, files=6)
    settings, catalog = lifeos_env.settings(), lifeos_env.catalog()
    done = good_backups(lifeos_env, 1)[0]
    busy = create_backup("json", settings, catalog).backup_id  # created, its verify "running"
    with lease(settings.backup_root, busy, "task-42", "verify"):
        result = rebuild(lifeos_env)
    assert f"left as it is: {busy} (verify by task-42), in progress" in result.stdout
    assert {i: r["status"] for i, r in listed(lifeos_env).items()} == {
        done: "verified",
        busy: "created",
    }


# ----------------------------------------------------------------------------- lost or corrupt


def generations(env: LifeosEnv) -> Path:
    return env.backup_root / ".state" / "catalog"


def make_legacy_catalog(env: LifeosEnv) -> None:
    """A plain-file catalog.sqlite3, as repositories made before the pointer layout have."""
    env.backup_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    pointer(env).touch(mode=0o600)


@pytest.mark.parametrize("layout", ["pointer", "legacy"])
def test_catalog_deleted_while_a_worker_runs_is_rebuilt_and_followed(
    lifeos_env: LifeosEnv, start_worker: Callable[..., WorkerProcess], layout: str
) -> None:
    make_tree(lifeos_env.app_dir, files=8)
    if layout == "legacy":
        make_legacy_catalog(lifeos_env)
    worker = start_worker()
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    first = request_backup("json", "before", wait=True, timeout=60, app=app).backup_id
    old_file = Path(os.path.realpath(pointer(lifeos_env)))

    os.remove(pointer(lifeos_env))  # `rm catalog.sqlite3` while the worker keeps it open
    assert listed(lifeos_env) == {}  # a new, empty catalog: no traceback, no disk I/O error
    result = rebuild(lifeos_env)
    assert "1 backups found (1 verified)" in result.stdout
    assert listed(lifeos_env)[first]["status"] == "verified"

    # The same worker process, never restarted, writes its next backup into the new catalog.
    second = request_backup("json", "after", wait=True, timeout=60, app=app).backup_id
    assert {i: r["status"] for i, r in listed(lifeos_env).items()} == {
        first: "verified",
        second: "verified",
    }
    new_file = Path(os.path.realpath(pointer(lifeos_env)))
    assert pointer(lifeos_env).is_symlink() and new_file.parent == generations(lifeos_env)
    assert new_file != old_file
    # No two database files share sidecars: each generation's carry its own name, and the only
    # others are those of the deleted plain file (legacy), which no open path leads to.
    for sidecar in generations(lifeos_env).glob("*-[ws][ah][lm]"):
        assert Path(str(sidecar)[: -len("-wal")]).is_file(), sidecar
    beside = {p.name for p in lifeos_env.backup_root.glob("catalog.sqlite3-*")}
    assert beside <= (
        {"catalog.sqlite3-wal", "catalog.sqlite3-shm"} if layout == "legacy" else set()
    )
    with sqlite3.connect(new_file) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    log = worker.log_path.read_text(errors="replace")
    assert "disk I/O error" not in log and "malformed" not in log


@pytest.mark.parametrize("layout", ["pointer", "legacy"])
def test_a_catalog_overwritten_with_garbage_is_replaced_and_kept_aside(
    lifeos_env: LifeosEnv, layout: str
) -> None:
    if layout == "legacy":
        make_legacy_catalog(lifeos_env)
    make_tree(lifeos_env.app_dir, files=6)
    ids = good_backups(lifeos_env, 2)
    lifeos_env.catalog().engine.dispose()  # no process has it open (its WAL checkpointed)
    garbage = b"this is no database\n" * 500
    pointer(lifeos_env).write_bytes(garbage)  # through the pointer: the catalog file itself

    broken = cli(lifeos_env, "list")
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
    assert broken.stderr.startswith("error: the catalog cannot be read")
    assert "lifeos-backup catalog rebuild" in broken.stderr

    result = rebuild(lifeos_env)
    assert "catalog rebuilt in a new catalog: 2 backups found (2 verified)" in result.stdout
    assert "the old catalog was unusable: file is not a database" in result.stdout
    [aside_line] = [line for line in result.stdout.splitlines() if "kept at" in line]
    aside = Path(aside_line.split("kept at ")[1].split(";")[0])
    assert ".corrupt-" in aside.name and aside.read_bytes() == garbage
    assert "audit trail" in aside_line
    assert pointer(lifeos_env).is_symlink()
    assert {i: r["status"] for i, r in listed(lifeos_env).items()} == dict.fromkeys(ids, "verified")
    audit = cli(lifeos_env, "audit", "--json")
    assert [r["action"] for r in json.loads(audit.stdout)] == ["catalog.rebuild"]


def test_invalid_remote_manifests_are_reported_and_skipped(
    lifeos_env: LifeosEnv, s3_bucket: Bucket
) -> None:
    make_tree(lifeos_env.app_dir, files=6)
    [backup_id] = good_backups(lifeos_env, 1)
    assert upload_backup(backup_id, lifeos_env.settings(), lifeos_env.catalog()) is not None
    genuine = json.loads(manifest_of(lifeos_env, backup_id).read_text())
    hostile = {
        "json_backup_20200101_000001": {**genuine, "backup_id": "json_backup_../../../x"},
        "json_backup_20200101_000002": {
            **genuine,
            "backup_id": "json_backup_20200101_000002",
            "archive": {**genuine["archive"], "name": "../../../../../etc/passwd"},
        },
        "json_backup_20200101_000003": genuine,  # names another backup
    }
    for name, document in hostile.items():
        s3_bucket.client.put_object(
            Bucket=s3_bucket.name,
            Key=f"{s3_bucket.prefix}/json/{name}.manifest.json",
            Body=json.dumps(document).encode(),
        )
    s3_bucket.client.put_object(
        Bucket=s3_bucket.name,
        Key=f"{s3_bucket.prefix}/json/json_backup_20200101_000004.manifest.json",
        Body=b"{not json",
    )
    lifeos_env.catalog().engine.dispose()
    shutil.rmtree(lifeos_env.backup_root)  # the repository and its catalog are gone

    result = rebuild(lifeos_env, "--from", "offsite")
    lines = warnings(result)
    assert len(lines) == 4 and all("skipped remote manifest" in line for line in lines), lines
    assert "catalog rebuilt from off-site in place: 1 backups found" in result.stdout
    assert "skipped: 4 invalid manifests" in result.stdout
    rows = listed(lifeos_env)
    assert list(rows) == [backup_id] and rows[backup_id]["location"] == "offsite"
