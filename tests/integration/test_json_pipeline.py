"""The JSON backup pipeline end to end: real Redis, a real Celery worker, the real CLI."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from celery.result import AsyncResult

from lifeos_backup.app.client import BackupFailed, backup_chain, make_app, request_backup
from lifeos_backup.jobs.backups import create_backup, verify_backup
from tests.support.trees import make_tree
from tests.support.worker import LifeosEnv

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).with_name("lifeos-backup"))


def cli(env: LifeosEnv, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env=env.subprocess_env(), capture_output=True, text=True, timeout=timeout
    )


def listed(env: LifeosEnv) -> list[dict[str, object]]:
    result = cli(env, "list", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def visible_files(env: LifeosEnv) -> list[str]:
    folder = env.backup_root / "json"
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_chain_through_worker_ends_verified(lifeos_env: LifeosEnv, start_worker) -> None:
    make_tree(lifeos_env.app_dir, files=40)
    start_worker()
    ref = request_backup(
        "json", "pre-test", wait=True, timeout=60, app=make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    )
    assert ref.backup_id and ref.backup_id.startswith("json_backup_")
    folder = lifeos_env.backup_root / "json"
    assert visible_files(lifeos_env) == [
        f"{ref.backup_id}.manifest.json",
        f"{ref.backup_id}.tar.zst",
    ]
    for path in folder.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert folder.stat().st_mode & 0o777 == 0o700
    manifest = json.loads((folder / f"{ref.backup_id}.manifest.json").read_text())
    files = [f for f in manifest["files"] if f["type"] == "file"]
    assert len(files) == 40 and manifest["verified_at"] and manifest["reason"] == "pre-test"
    rows = listed(lifeos_env)
    assert [(r["id"], r["status"]) for r in rows] == [(ref.backup_id, "verified")]
    assert set(rows[0]) >= {"id", "kind", "status", "created_at", "size", "path"}
    runs = lifeos_env.catalog().task_runs()
    names = [r.task_name for r in runs if r.state == "succeeded"]
    assert names == [  # upload: a quiet no-op here, no bucket is configured
        "lifeos.backup.create",
        "lifeos.backup.verify",
        "lifeos.backup.upload",
        "lifeos.backup.rotate",
    ]


def test_cli_backup_wait_shows_progress_and_prints_id_last(
    lifeos_env: LifeosEnv, start_worker
) -> None:
    make_tree(lifeos_env.app_dir, files=600, size=40_000)
    start_worker(LIFEOS_COMPRESSION="gzip", LIFEOS_COMPRESSION_LEVEL="9")
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [CLI, "backup", "json", "--wait", "--reason", "tty"],
        env=lifeos_env.subprocess_env(COLUMNS="120"),
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
    )
    os.close(follower)
    screen = b""
    while proc.poll() is None or select.select([leader], [], [], 0.2)[0]:
        if select.select([leader], [], [], 0.2)[0]:
            try:
                screen += os.read(leader, 65536)
            except OSError:
                break
    stdout = proc.stdout.read() if proc.stdout else ""
    assert proc.wait() == 0, screen.decode(errors="replace")
    text = screen.decode(errors="replace")
    assert "archiving" in text and "/600 files" in text  # the task's own progress reports
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("json_backup_")
    assert [r["status"] for r in listed(lifeos_env) if r["id"] == last] == ["verified"]


def test_flipped_byte_or_edited_member_fails_verify(lifeos_env: LifeosEnv) -> None:
    make_tree(lifeos_env.app_dir, files=20)
    settings, catalog = lifeos_env.settings(), lifeos_env.catalog()
    first = create_backup("json", settings, catalog).backup_id
    verify_backup(first, settings, catalog)
    archive = lifeos_env.backup_root / "json" / f"{first}.tar.zst"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    result = cli(lifeos_env, "verify", first)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert catalog.get(first).status == "failed"

    time.sleep(1)  # next backup id is per second
    second = create_backup("json", settings, catalog).backup_id
    manifest_path = lifeos_env.backup_root / "json" / f"{second}.manifest.json"
    manifest = json.loads(manifest_path.read_text())
    edited = next(f for f in manifest["files"] if f["type"] == "file")
    edited["sha256"] = "0" * 64  # the member no longer matches what the manifest promises
    manifest_path.write_text(json.dumps(manifest))
    result = cli(lifeos_env, "verify", second)
    assert result.returncode == 1 and edited["path"] in result.stderr
    assert catalog.get(second).status == "failed"
    assert all(r["status"] == "failed" for r in listed(lifeos_env))


def test_sigkill_during_create_leaves_nothing_good(lifeos_env: LifeosEnv, start_worker) -> None:
    make_tree(lifeos_env.app_dir, files=900, size=40_000)
    slow = {"LIFEOS_COMPRESSION": "gzip", "LIFEOS_COMPRESSION_LEVEL": "9"}
    worker = start_worker(**slow)
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    steps, ref = backup_chain(app, "json", "doomed", "test")
    steps.apply_async()
    deadline = time.monotonic() + 30
    while AsyncResult(ref.create_task_id, app=app).state != "PROGRESS":
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.05)
    worker.kill()
    redis = lifeos_env.redis()
    assert redis.exists("lifeos:lock:backup:json")  # checked first: it has only seconds to live

    partial = [p.name for p in (lifeos_env.backup_root / "json").iterdir()]
    assert all(name.startswith(".") and name.endswith(".partial") for name in partial), partial
    assert visible_files(lifeos_env) == []
    assert [r["status"] for r in listed(lifeos_env)] == ["running"]  # never verified/created
    deadline = time.monotonic() + 30
    while redis.exists("lifeos:lock:backup:json"):  # TTL 3 s: frees itself, nobody renews it
        assert time.monotonic() < deadline
        time.sleep(0.2)

    lifeos_env.set(LIFEOS_COMPRESSION="zstd")
    start_worker()
    ref2 = request_backup("json", "after crash", wait=True, timeout=120, app=app)
    statuses = {r["id"]: r["status"] for r in listed(lifeos_env)}
    assert statuses[ref2.backup_id] == "verified"
    assert sorted(statuses.values()) == ["failed", "verified"]  # the killed run, marked failed
    assert not any(p.name.endswith(".partial") for p in (lifeos_env.backup_root / "json").iterdir())
    assert visible_files(lifeos_env) == [
        f"{ref2.backup_id}.manifest.json",
        f"{ref2.backup_id}.tar.zst",
    ]


def test_concurrent_requests_never_run_at_once(lifeos_env: LifeosEnv, start_worker) -> None:
    make_tree(lifeos_env.app_dir, files=300, size=40_000)
    start_worker(concurrency=2, LIFEOS_COMPRESSION="gzip", LIFEOS_COMPRESSION_LEVEL="9")
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    refs = []
    for reason in ("one", "two"):
        steps, ref = backup_chain(app, "json", reason, "test")
        steps.apply_async()
        refs.append(ref)
    outcomes = []
    for ref in refs:
        try:
            outcomes.append(("ok", request_wait(app, ref)))
        except BackupFailed as exc:
            outcomes.append(("failed", str(exc)))
    assert sorted(o[0] for o in outcomes) == ["failed", "ok"], outcomes
    message = next(o[1] for o in outcomes if o[0] == "failed")
    assert "already running" in message and "skipped" in message
    runs = [r for r in lifeos_env.catalog().task_runs() if r.task_name == "lifeos.backup.create"]
    assert len(runs) == 2
    good = [r for r in runs if r.state == "succeeded"]
    skipped = [r for r in runs if r.state == "failed"]
    assert len(good) == 1 and len(skipped) == 1
    # the skipped request ran while the other held the lock (the runs overlap; which one recorded
    # its start first is a race of the two pool processes), and it wrote no backup
    assert good[0].started_at <= skipped[0].finished_at <= good[0].finished_at
    assert skipped[0].started_at <= good[0].finished_at
    assert [r["status"] for r in listed(lifeos_env)] == ["verified"]


def request_wait(app, ref):  # type: ignore[no-untyped-def]
    from lifeos_backup.app.client import wait_verified

    return wait_verified(app, ref, timeout=120)


def test_message_that_keeps_killing_its_worker_fails(lifeos_env: LifeosEnv, start_worker) -> None:
    make_tree(lifeos_env.app_dir, files=5)
    start_worker()
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    steps, ref = backup_chain(app, "json", "poison", "test")
    # Three earlier deliveries of this very message died with their worker (max_deliveries=3).
    lifeos_env.redis().set(f"lifeos:deliveries:{ref.create_task_id}:0", 3)
    steps.apply_async()
    with pytest.raises(BackupFailed, match="delivered 4 times"):
        request_wait(app, ref)
    assert listed(lifeos_env) == []


def test_rotation_keeps_newest_verified_and_dry_run_deletes_nothing(lifeos_env: LifeosEnv) -> None:
    make_tree(lifeos_env.app_dir, files=5)
    settings, catalog = lifeos_env.settings(), lifeos_env.catalog()
    ids = []
    for _ in range(3):
        ids.append(create_backup("json", settings, catalog).backup_id)
        verify_backup(ids[-1], settings, catalog)
        time.sleep(1)
    newest = create_backup("json", settings, catalog).backup_id  # created, never verified
    before = visible_files(lifeos_env)
    lifeos_env.set(LIFEOS_RETENTION_JSON="last=1", LIFEOS_RETENTION_GRACE_HOURS="0")

    dry = cli(lifeos_env, "rotate", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would delete" in dry.stdout and "newest verified" in dry.stdout
    assert visible_files(lifeos_env) == before
    assert {r["status"] for r in listed(lifeos_env)} == {"verified", "created"}

    done = cli(lifeos_env, "rotate")
    assert done.returncode == 0, done.stderr
    statuses = {r["id"]: r["status"] for r in listed(lifeos_env)}
    assert statuses[ids[-1]] == "verified"  # newest verified survives last=1 ...
    assert statuses[ids[0]] == statuses[ids[1]] == "deleted"
    assert statuses[newest] == "deleted"  # ... the unverified one past grace does not
    assert visible_files(lifeos_env) == [f"{ids[-1]}.manifest.json", f"{ids[-1]}.tar.zst"]


def test_deleted_catalog_is_rebuilt_from_manifests(lifeos_env: LifeosEnv) -> None:
    make_tree(lifeos_env.app_dir, files=5)
    settings, catalog = lifeos_env.settings(), lifeos_env.catalog()
    good = create_backup("json", settings, catalog).backup_id
    verify_backup(good, settings, catalog)
    time.sleep(1)
    unverified = create_backup("json", settings, catalog).backup_id
    before = sorted((r["id"], r["size"], r["path"]) for r in listed(lifeos_env))

    for path in lifeos_env.backup_root.glob("catalog.sqlite3*"):
        path.unlink()
    result = cli(lifeos_env, "catalog", "rebuild")
    assert result.returncode == 0, result.stderr
    assert "2 backups found (2 verified)" in result.stdout
    rows = listed(lifeos_env)
    assert sorted((r["id"], r["size"], r["path"]) for r in rows) == before
    # The rebuild re-read both archives: the one never verified before is verified now.
    assert {r["id"]: r["status"] for r in rows} == {good: "verified", unverified: "verified"}
