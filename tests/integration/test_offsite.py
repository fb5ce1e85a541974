"""Off-site copies end to end: a moto S3 server over HTTP, real Redis, real workers, the CLI."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pyrage
import pytest
from celery.result import AsyncResult

from lifeos_backup.app.client import backup_chain, make_app, request_backup
from lifeos_backup.core.errors import ConfigError, OffsiteError, VerificationFailed
from lifeos_backup.formats.crypto import (
    fingerprint,
    generate_identity,
    parse_recipients,
    seal_file,
)
from lifeos_backup.jobs.backups import create_backup, verify_backup
from lifeos_backup.jobs.locks import exclusive
from lifeos_backup.storage.offsite import state
from lifeos_backup.storage.offsite import upload as upload_module
from lifeos_backup.storage.offsite.download import rebuild_from_offsite
from lifeos_backup.storage.offsite.sync import sync
from lifeos_backup.storage.offsite.upload import upload_backup
from tests.support.s3 import (
    Bucket,
    MotoServer,
    authenticating_server,
    closed_port_url,
    new_bucket,
)
from tests.support.services import PostgresCluster, temporary_database
from tests.support.trees import make_tree
from tests.support.worker import LifeosEnv

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).with_name("lifeos-backup"))
MIB = 1 << 20
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


# --- helpers --------------------------------------------------------------------------------------


def setenv(env: LifeosEnv, monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    """Settings for this test and the workers/CLI it starts (undone after the test)."""
    from lifeos_backup.core.settings import get_settings

    for key, value in values.items():
        monkeypatch.setenv(key, value)
    env.vars.update(values)
    get_settings.cache_clear()


def cli(env: LifeosEnv, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args],
        env=env.subprocess_env(**extra),
        capture_output=True,
        text=True,
        timeout=120,
    )


def listed(env: LifeosEnv) -> dict[str, dict[str, object]]:
    result = cli(env, "list", "--json")
    assert result.returncode == 0, result.stderr
    return {row["id"]: row for row in json.loads(result.stdout)}


def add_blob(env: LifeosEnv, mib: int, name: str = "blob.bin") -> None:
    """Incompressible data, so the archive needs several 5 MiB parts."""
    (env.app_dir / "data" / name).write_bytes(os.urandom(mib * MIB))


def good_backup(env: LifeosEnv) -> str:
    settings, catalog = env.settings(), env.catalog()
    backup_id = create_backup("json", settings, catalog).backup_id
    verify_backup(backup_id, settings, catalog)
    return backup_id


def uploaded_backup(env: LifeosEnv) -> str:
    backup_id = good_backup(env)
    assert upload_backup(backup_id, env.settings(), env.catalog()) is not None
    return backup_id


def no_locks(_name: str) -> AbstractContextManager[object]:
    return nullcontext()


def redis_locks(env: LifeosEnv):  # type: ignore[no-untyped-def]
    @contextmanager
    def lock(name: str) -> Iterator[object]:
        with exclusive(env.redis(), name, 3, "test") as held:
            yield held

    return lock


def archive_key(bucket: Bucket, env: LifeosEnv, backup_id: str) -> str:
    return f"{bucket.prefix}/{env.catalog().get(backup_id).path}"


def manifest_key(bucket: Bucket, backup_id: str) -> str:
    return f"{bucket.prefix}/json/{backup_id}.manifest.json"


def wait_task(app, task_id: str, timeout: float = 90) -> str:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = AsyncResult(task_id, app=app).state
        if status in ("SUCCESS", "FAILURE"):
            return status
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} still {status} after {timeout}s")


def tree(root: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every file and folder under data/, presets/, configs/: mode and content."""
    found: dict[str, tuple[int, bytes | str]] = {}
    for top in ("data", "presets", "configs"):
        for path in sorted((root / top).rglob("*")) if (root / top).exists() else []:
            rel = str(path.relative_to(root))
            mode = path.lstat().st_mode & 0o777
            found[rel] = (mode, path.read_bytes() if path.is_file() else "dir")
    return found


def keypair(folder: Path, name: str = "backup.key") -> tuple[Path, str, str]:
    identity, recipient = generate_identity()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"# test key\n{identity}\n")
    path.chmod(0o600)
    return path, identity, recipient


# --- the chain ------------------------------------------------------------------------------------


def test_chain_uploads_and_remote_checksum_matches(
    lifeos_env: LifeosEnv, s3_bucket: Bucket, start_worker
) -> None:
    make_tree(lifeos_env.app_dir, files=30)
    add_blob(lifeos_env, 12)
    start_worker()
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    ref = request_backup("json", "offsite", wait=True, timeout=120, app=app)
    assert wait_task(app, ref.upload_task_id) == "SUCCESS"
    assert wait_task(app, ref.rotate_task_id) == "SUCCESS"

    archive = lifeos_env.backup_root / "json" / f"{ref.backup_id}.tar.zst"
    mpath = archive.with_name(f"{ref.backup_id}.manifest.json")
    manifest = json.loads(mpath.read_text())
    key = archive_key(s3_bucket, lifeos_env, ref.backup_id)
    assert s3_bucket.keys() == [manifest_key(s3_bucket, ref.backup_id), key]
    head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=key, ChecksumMode="ENABLED")
    assert head["ContentLength"] == manifest["archive"]["size"] == archive.stat().st_size
    assert head["Metadata"]["sha256"] == manifest["archive"]["sha256"]
    assert hashlib.sha256(s3_bucket.get(key)).hexdigest() == manifest["archive"]["sha256"]
    # S3's own checksum: the SHA-256 over the SHA-256 of every 5 MiB part, computed here again
    data = archive.read_bytes()
    parts = [data[i : i + 5 * MIB] for i in range(0, len(data), 5 * MIB)]
    composite = hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest()
    assert len(parts) == 3
    assert head["ChecksumSHA256"].split("-")[0] == base64.b64encode(composite).decode()
    assert s3_bucket.get(manifest_key(s3_bucket, ref.backup_id)) == mpath.read_bytes()
    assert s3_bucket.uploads() == []

    row = listed(lifeos_env)[ref.backup_id]
    assert (row["status"], row["location"], row["offsite_status"]) == (
        "verified",
        "both",
        "uploaded",
    )
    runs = [r.task_name for r in lifeos_env.catalog().task_runs() if r.state == "succeeded"]
    assert runs == [
        "lifeos.backup.create",
        "lifeos.backup.verify",
        "lifeos.backup.upload",
        "lifeos.backup.rotate",
    ]


# --- encryption -----------------------------------------------------------------------------------


def test_encrypted_backup_is_ciphertext_remotely_and_needs_its_key(
    lifeos_env: LifeosEnv, s3_bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(lifeos_env.app_dir, files=25)
    key_file = tmp_path / "keys" / "backup.key"
    key_file.parent.mkdir()
    made = cli(lifeos_env, "keygen", "--output", str(key_file))
    assert made.returncode == 0, made.stderr
    recipient = made.stdout.strip().splitlines()[-1]
    identity = key_file.read_text().splitlines()[-1]
    assert recipient.startswith("age1") and key_file.stat().st_mode & 0o777 == 0o600
    setenv(lifeos_env, monkeypatch, LIFEOS_ENCRYPTION_RECIPIENTS=recipient)

    backup_id = good_backup(lifeos_env)
    folder = lifeos_env.backup_root / "json"
    archive = folder / f"{backup_id}.tar.zst.age"
    manifest_text = (folder / f"{backup_id}.manifest.json").read_text()
    manifest = json.loads(manifest_text)
    assert manifest["encryption"] == {
        "scheme": "age-encryption.org/v1",
        "recipients": [fingerprint(recipient)],
    }
    assert manifest["verified_scope"] == "ciphertext"  # verified without the private key
    assert recipient not in manifest_text and identity not in manifest_text
    upload_backup(backup_id, lifeos_env.settings(), lifeos_env.catalog())

    remote = s3_bucket.get(archive_key(s3_bucket, lifeos_env, backup_id))
    assert remote == archive.read_bytes()  # the local copy is protected just the same
    assert remote.startswith(b"age-encryption.org/v1\n") and ZSTD_MAGIC not in remote[:400]
    assert b"item-00000.json" not in remote and b'"items"' not in remote
    plain = pyrage.decrypt(
        remote, [pyrage.x25519.Identity.from_str(identity)]
    )  # stock age reads it
    assert plain.startswith(ZSTD_MAGIC)
    # The manifest goes up sealed to the same recipients; the local one stays clear.
    sealed_key = manifest_key(s3_bucket, backup_id) + ".age"
    assert s3_bucket.keys() == sorted([archive_key(s3_bucket, lifeos_env, backup_id), sealed_key])
    sealed = s3_bucket.get(sealed_key)
    assert sealed.startswith(b"age-encryption.org/v1\n") and b"item-00000" not in sealed
    assert pyrage.decrypt(sealed, [pyrage.x25519.Identity.from_str(identity)]) == (
        manifest_text.encode()
    )
    meta = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=sealed_key)["Metadata"]
    assert meta == {}

    target = tmp_path / "restored"
    restored = cli(
        lifeos_env,
        *("restore", "json", backup_id, "--target", str(target), "--from", "offsite"),
        LIFEOS_ENCRYPTION_IDENTITY_FILE=str(key_file),
    )
    assert restored.returncode == 0, restored.stderr
    assert tree(target) == tree(lifeos_env.app_dir)

    other = tmp_path / "keys" / "other.key"
    assert cli(lifeos_env, "keygen", "--output", str(other)).returncode == 0
    for identity_file, message in (
        (str(other), "error: cannot decrypt off-site manifest"),
        ("", "is encrypted and no private key is configured"),
    ):
        wrong = tmp_path / f"wrong-{len(identity_file)}"
        refused = cli(
            lifeos_env,
            *("restore", "json", backup_id, "--target", str(wrong), "--from", "offsite"),
            LIFEOS_ENCRYPTION_IDENTITY_FILE=identity_file,
        )
        assert refused.returncode == 1
        assert message in refused.stderr and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert not wrong.exists() or not any(wrong.iterdir())

    setenv(lifeos_env, monkeypatch, LIFEOS_ENCRYPTION_IDENTITY_FILE=str(key_file))
    full = verify_backup(backup_id, lifeos_env.settings(), lifeos_env.catalog())
    assert full.verified_scope == "content"  # with the key: every member checked


def put_back(bucket: Bucket, key: str, data: bytes) -> None:
    """Replace an object's bytes in the bucket, keeping its metadata (a quiet tampering)."""
    metadata = bucket.client.head_object(Bucket=bucket.name, Key=key)["Metadata"]
    bucket.client.put_object(
        Bucket=bucket.name, Key=key, Body=data, Metadata=metadata, ChecksumAlgorithm="SHA256"
    )


def test_sealed_manifests_refuse_damage_and_wrong_keys_and_clear_ones_keep_working(
    lifeos_env: LifeosEnv, s3_bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bucket that holds a clear manifest (uploaded before manifests were sealed) beside a
    sealed one: the backup host (no private key) syncs both, a restore machine reads both; a
    tampered or cut sealed manifest and a wrong key are each refused with one clear line; a
    re-upload replaces a clear manifest by a sealed one; deleting a copy removes either."""
    from lifeos_backup.storage.offsite.download import KeyNeeded, fetched
    from lifeos_backup.storage.offsite.s3 import connect
    from lifeos_backup.storage.offsite.sync import delete_remote

    key_file, _identity, recipient = keypair(tmp_path / "safe")
    other_file, _, other_recipient = keypair(tmp_path / "safe", "other.key")
    setenv(lifeos_env, monkeypatch, LIFEOS_ENCRYPTION_RECIPIENTS=recipient)
    make_tree(lifeos_env.app_dir, files=6)
    old = good_backup(lifeos_env)
    setenv(lifeos_env, monkeypatch, LIFEOS_ENCRYPTION_RECIPIENTS="")  # an upload of before
    upload_backup(old, lifeos_env.settings(), lifeos_env.catalog())
    setenv(lifeos_env, monkeypatch, LIFEOS_ENCRYPTION_RECIPIENTS=recipient)
    time.sleep(1)
    new = uploaded_backup(lifeos_env)
    old_clear, new_sealed = manifest_key(s3_bucket, old), manifest_key(s3_bucket, new) + ".age"
    old_sealed = old_clear + ".age"
    keys = set(s3_bucket.keys())
    assert {old_clear, new_sealed} < keys
    assert old_sealed not in keys and manifest_key(s3_bucket, new) not in keys

    # The backup host, without the private key: both copies check out.
    catalog = lifeos_env.catalog()
    assert sync(lifeos_env.settings(), catalog, no_locks).problems == {}
    # A machine without the key learns what the listing tells, and nothing is changed.
    setenv(lifeos_env, monkeypatch, LIFEOS_CATALOG_URL=f"sqlite:///{tmp_path / 'new.sqlite3'}")
    fresh = lifeos_env.catalog()
    with pytest.raises(KeyNeeded, match="1 of the 2 backups") as needed:
        rebuild_from_offsite(lifeos_env.settings(), fresh)
    assert [(i.backup_id, i.kind, i.sealed) for i in needed.value.listed] == [
        (old, "json", False),
        (new, "json", True),
    ]
    assert [i.archive_size for i in needed.value.listed] == [
        catalog.get(old).size,
        catalog.get(new).size,
    ]
    assert fresh.list() == []
    setenv(lifeos_env, monkeypatch, LIFEOS_ENCRYPTION_IDENTITY_FILE=str(key_file))
    assert rebuild_from_offsite(lifeos_env.settings(), fresh) == [old, new]
    for backup_id in (old, new):
        with fetched(backup_id, lifeos_env.settings(), fresh) as (_archive, manifest):
            assert manifest.backup_id == backup_id and len(list(manifest.iter_files())) > 6
    monkeypatch.delenv("LIFEOS_CATALOG_URL")
    lifeos_env.vars.pop("LIFEOS_CATALOG_URL", None)

    # The wrong key: one line, and the catalog stays as it is.
    before = listed(lifeos_env)
    wrong = cli(
        lifeos_env, "catalog", "rebuild", "--from", "offsite",
        LIFEOS_ENCRYPTION_IDENTITY_FILE=str(other_file),
    )  # fmt: skip
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr
    assert wrong.stderr.startswith("error: cannot decrypt off-site manifest"), wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    assert listed(lifeos_env) == before

    # A tampered or cut sealed manifest is refused by a restore and skipped by a rebuild.
    sealed = s3_bucket.get(new_sealed)
    for damaged in (sealed[:-100], sealed[:200] + bytes([sealed[200] ^ 1]) + sealed[201:]):
        put_back(s3_bucket, new_sealed, damaged)
        target = tmp_path / f"restored-{len(damaged)}"
        refused = cli(
            lifeos_env, "restore", "json", new, "--target", str(target), "--from", "offsite"
        )
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert refused.stderr.startswith(f"error: off-site manifest {new}.manifest.json.age is")
        assert "is damaged" in refused.stderr and len(refused.stderr.splitlines()) == 1
        assert not target.exists() or not any(target.iterdir())
    # ... and so is one sealed for another key, while the others open.
    foreign = io.BytesIO()
    old_manifest = lifeos_env.backup_root / "json" / f"{old}.manifest.json"
    seal_file(old_manifest, foreign, parse_recipients(other_recipient))
    stranger = f"{s3_bucket.prefix}/json/json_backup_20200101_000000.manifest.json.age"
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=stranger, Body=foreign.getvalue())
    skipped: list[str] = []
    assert rebuild_from_offsite(lifeos_env.settings(), catalog, skipped.append) == [old]
    assert len(skipped) == 2 and "is damaged" in skipped[0]
    assert skipped[1].startswith(f"skipped remote manifest {stranger}: cannot decrypt")
    s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key=stranger)

    # The sealed manifest gone, the old archive altered: one sync puts both right, sealed.
    s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key=new_sealed)
    old_archive = archive_key(s3_bucket, lifeos_env, old)
    data = s3_bucket.get(old_archive)
    put_back(s3_bucket, old_archive, data[:300] + bytes([data[300] ^ 1]) + data[301:])
    report = sync(lifeos_env.settings(), catalog, no_locks)
    assert "manifest is missing" in report.problems[new]
    assert "checksum differs" in report.problems[old]
    assert sorted(report.uploaded) == sorted([old, new])
    keys = set(s3_bucket.keys())
    assert old_clear not in keys and {old_sealed, new_sealed} < keys
    assert s3_bucket.get(new_sealed) != sealed  # sealed again (a new file key)

    # Deleting a copy removes its manifest, sealed or clear, before its archive.
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=old_clear, Body=b"{}")
    for backup_id in (old, new):
        delete_remote(connect(lifeos_env.settings()), catalog, backup_id, "test", "forget")
    assert s3_bucket.keys() == []


# --- failures -------------------------------------------------------------------------------------


def check_failed_upload(env: LifeosEnv, app, ref, reason: str, attempts: int = 3):  # type: ignore[no-untyped-def]
    """The chain's upload was tried `attempts` times (retried while the failure may pass), then
    failed for `reason`; the local backup stays good."""
    assert wait_task(app, ref.upload_task_id) == "FAILURE"
    row = env.catalog().get(ref.backup_id)
    assert row.status == "verified"  # the local backup stays good
    assert row.offsite_status == "failed" and row.offsite_attempts == attempts
    assert row.offsite_error and reason in row.offsite_error
    runs = [r.state for r in env.catalog().task_runs() if r.task_name.endswith("upload")]
    assert runs == ["retrying"] * (attempts - 1) + ["failed"]
    return row


def test_endpoint_down_retries_then_fails_and_a_later_sync_uploads(
    lifeos_env: LifeosEnv, s3_bucket: Bucket, start_worker
) -> None:
    make_tree(lifeos_env.app_dir, files=10)
    start_worker(LIFEOS_S3_ENDPOINT_URL=closed_port_url(), LIFEOS_RETRY_MAX="2")
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    ref = request_backup("json", "endpoint down", wait=True, timeout=120, app=app)
    check_failed_upload(lifeos_env, app, ref, "unreachable")
    assert listed(lifeos_env)[ref.backup_id]["location"] == "local"
    assert s3_bucket.keys() == []

    synced = cli(lifeos_env, "offsite", "sync")  # the endpoint is back
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["uploaded"] == [ref.backup_id]
    assert listed(lifeos_env)[ref.backup_id]["location"] == "both"
    assert s3_bucket.keys().count(archive_key(s3_bucket, lifeos_env, ref.backup_id)) == 1


def redis_values(env: LifeosEnv) -> bytes:
    """Every value in the test's Redis (results, queues, locks), for a search."""
    client = env.redis()
    read = {
        b"string": lambda k: [client.get(k) or b""],
        b"list": lambda k: client.lrange(k, 0, -1),
        b"hash": lambda k: [b for pair in client.hgetall(k).items() for b in pair],
        b"set": lambda k: list(client.smembers(k)),
        b"zset": lambda k: client.zrange(k, 0, -1),
    }
    found: list[bytes] = []
    for key in client.scan_iter():
        found += [key, *read.get(client.type(key), lambda _k: [])(key)]
    return b"\n".join(found)


def test_wrong_credentials_fail_at_once_with_the_reason_and_never_leak_the_secret(
    lifeos_env: LifeosEnv, start_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = authenticating_server()  # moto checks signatures: a wrong secret gets 403
    try:
        bucket = new_bucket(server)
        good = server.credentials
        wrong = {**good, "AWS_SECRET_ACCESS_KEY": "wrong-" + os.urandom(12).hex()}
        setenv(
            lifeos_env, monkeypatch,
            LIFEOS_S3_ENDPOINT_URL=server.url, LIFEOS_S3_BUCKET=bucket.name,
            LIFEOS_S3_PREFIX=bucket.prefix, LIFEOS_S3_MAX_ATTEMPTS="2",
            AWS_DEFAULT_REGION="us-east-1", **wrong,
        )  # fmt: skip
        make_tree(lifeos_env.app_dir, files=10)
        start_worker(LIFEOS_RETRY_MAX="2")
        app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
        ref = request_backup("json", "wrong credentials", wait=True, timeout=120, app=app)
        row = check_failed_upload(lifeos_env, app, ref, "refused our credentials", attempts=1)
        assert "403" in str(row.offsite_error)  # the first request, a HEAD, gets a bare 403
        assert bucket.keys() == [] and bucket.uploads() == []

        synced = cli(lifeos_env, "offsite", "sync", **good)  # the credentials are fixed
        assert synced.returncode == 0, synced.stderr
        assert json.loads(synced.stdout)["uploaded"] == [ref.backup_id]

        # nothing secret in the catalog, the manifests, the worker's log, or Redis
        for secret in (wrong["AWS_SECRET_ACCESS_KEY"], good["AWS_SECRET_ACCESS_KEY"]):
            files = [p for p in lifeos_env.root.rglob("*") if p.is_file()]
            assert any(p.name.startswith("worker-") for p in files)
            assert [p for p in files if secret.encode() in p.read_bytes()] == []
            assert secret.encode() not in redis_values(lifeos_env)
    finally:
        server.stop()


class _SlowDown(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint that is overloaded: objects are absent, every upload gets 503 SlowDown."""

    puts = 0

    def do_HEAD(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self) -> None:
        type(self).puts += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = (
            b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
            b"<Message>Please reduce your request rate.</Message></Error>"
        )
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def test_throttling_is_retried_with_backoff_then_recorded(
    lifeos_env: LifeosEnv, s3_bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(lifeos_env.app_dir, files=5)
    backup_id = good_backup(lifeos_env)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowDown)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        setenv(
            lifeos_env,
            monkeypatch,
            LIFEOS_S3_ENDPOINT_URL=f"http://127.0.0.1:{server.server_address[1]}",
            LIFEOS_S3_MAX_ATTEMPTS="3",
        )
        with pytest.raises(OffsiteError, match="SlowDown"):
            upload_backup(backup_id, lifeos_env.settings(), lifeos_env.catalog())
    finally:
        server.shutdown()
    assert _SlowDown.puts == 3  # botocore's own retries, with backoff, before giving up
    row = lifeos_env.catalog().get(backup_id)
    assert row.status == "verified" and row.offsite_status == "failed"
    assert row.offsite_error and "SlowDown" in row.offsite_error


class _BrokenStream(http.server.BaseHTTPRequestHandler):
    """Serves one object; the first GET is cut off halfway, later ones honour Range."""

    data = b""
    ranges: list[str | None] = []  # noqa: RUF012 - test double, reset per test

    def do_GET(self) -> None:
        wanted = self.headers.get("Range")
        type(self).ranges.append(wanted)
        start = int(wanted.split("=")[1].rstrip("-")) if wanted else 0
        body = self.data[start:]
        self.send_response(206 if wanted else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if len(type(self).ranges) == 1:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # the connection dies mid-body
            return
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def test_download_resumes_a_broken_stream_and_checks_the_whole(
    lifeos_env: LifeosEnv, s3_bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lifeos_backup.formats.manifest import read_manifest
    from lifeos_backup.storage.offsite.download import download_archive
    from lifeos_backup.storage.offsite.s3 import connect

    make_tree(lifeos_env.app_dir, files=5)
    add_blob(lifeos_env, 3)
    backup_id = good_backup(lifeos_env)
    row = lifeos_env.catalog().get(backup_id)
    archive = lifeos_env.backup_root / row.path
    manifest = read_manifest(archive.with_name(f"{backup_id}.manifest.json"))
    _BrokenStream.data, _BrokenStream.ranges = archive.read_bytes(), []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BrokenStream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        setenv(
            lifeos_env,
            monkeypatch,
            LIFEOS_S3_ENDPOINT_URL=f"http://127.0.0.1:{server.server_address[1]}",
        )
        settings = lifeos_env.settings()
        dest = tmp_path / "down.bin"
        download_archive(connect(settings), "lifeos/x", dest, manifest, settings)
        assert dest.read_bytes() == archive.read_bytes()
        assert _BrokenStream.ranges[0] is None and _BrokenStream.ranges[1].startswith("bytes=")
        assert int(_BrokenStream.ranges[1][6:-1]) > 0  # continued where it broke, not from 0

        _BrokenStream.data, _BrokenStream.ranges = archive.read_bytes()[:-1] + b"!", []
        with pytest.raises(VerificationFailed, match="does not match its manifest"):
            download_archive(connect(settings), "lifeos/x", dest, manifest, settings)
        assert not dest.exists() or dest.read_bytes() == archive.read_bytes()
        assert not list(tmp_path.glob(".*.download"))
    finally:
        server.shutdown()


# --- re-checks ------------------------------------------------------------------------------------


def test_sync_recheck_finds_truncated_and_altered_remote_copies(
    lifeos_env: LifeosEnv, s3_bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(lifeos_env.app_dir, files=10)
    first = uploaded_backup(lifeos_env)
    time.sleep(1)
    make_tree(lifeos_env.app_dir, files=12, seed=2)
    second = uploaded_backup(lifeos_env)
    client, bucket = s3_bucket.client, s3_bucket.name
    for backup_id, damage in ((first, "truncate"), (second, "flip")):
        key = archive_key(s3_bucket, lifeos_env, backup_id)
        data = bytearray(s3_bucket.get(key))
        metadata = client.head_object(Bucket=bucket, Key=key)["Metadata"]  # kept as it was
        if damage == "truncate":
            data = data[:-1000]
        else:
            data[len(data) // 2] ^= 0x01
        client.put_object(
            Bucket=bucket, Key=key, Body=bytes(data), Metadata=metadata, ChecksumAlgorithm="SHA256"
        )
    catalog = lifeos_env.catalog()
    row = catalog.get(first)  # the first's local copy is gone (rotated away)
    (lifeos_env.backup_root / row.path).unlink()
    catalog.update(first, status="deleted")
    setenv(lifeos_env, monkeypatch, LIFEOS_OFFSITE_SYNC_SAMPLE="0")  # cheap checks only

    synced = cli(lifeos_env, "offsite", "sync")
    assert synced.returncode == 0, synced.stderr
    report = json.loads(synced.stdout)
    assert sorted(report["problems"]) == sorted([first, second])
    assert "bytes" in report["problems"][first]
    assert "checksum" in report["problems"][second]
    assert report["uploaded"] == [second]  # its good local copy replaced the damaged one
    lost = catalog.get(first)
    assert lost.offsite_status == "damaged" and (lost.offsite_error or "").startswith("re-check:")
    healed = catalog.get(second)
    key = archive_key(s3_bucket, lifeos_env, second)
    assert healed.offsite_status == "uploaded"
    assert hashlib.sha256(s3_bucket.get(key)).hexdigest() == healed.sha256
    rows = listed(lifeos_env)
    assert (rows[first]["location"], rows[second]["location"]) == ("none", "both")


def test_full_read_back_finds_damage_the_bucket_metadata_hides(
    lifeos_env: LifeosEnv, s3_bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(lifeos_env.app_dir, files=10)
    backup_id = uploaded_backup(lifeos_env)
    key = archive_key(s3_bucket, lifeos_env, backup_id)
    data = bytearray(s3_bucket.get(key))
    data[100] ^= 0x01
    metadata = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=key)["Metadata"]
    s3_bucket.client.put_object(
        Bucket=s3_bucket.name,
        Key=key,
        Body=bytes(data),
        Metadata=metadata,
        ChecksumAlgorithm="SHA256",
    )
    # A new catalog built from the bucket takes its checksums as found: size and metadata agree.
    setenv(lifeos_env, monkeypatch, LIFEOS_CATALOG_URL=f"sqlite:///{tmp_path / 'new.sqlite3'}")
    catalog = lifeos_env.catalog()
    assert rebuild_from_offsite(lifeos_env.settings(), catalog) == [backup_id]
    assert catalog.get(backup_id).offsite_status == "uploaded"

    setenv(lifeos_env, monkeypatch, LIFEOS_OFFSITE_SYNC_SAMPLE="1")
    report = sync(lifeos_env.settings(), catalog, no_locks)
    assert "read back in full" in report.problems[backup_id]
    assert report.uploaded == [backup_id]  # re-uploaded from the good local copy
    assert hashlib.sha256(s3_bucket.get(key)).hexdigest() == catalog.get(backup_id).sha256


# --- interrupted uploads --------------------------------------------------------------------------


def test_interrupted_multipart_upload_resumes_from_recorded_parts(
    lifeos_env: LifeosEnv, s3_bucket: Bucket, start_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(lifeos_env.app_dir, files=5)
    add_blob(lifeos_env, 16)  # 4 parts of 5 MiB
    worker = start_worker(LIFEOS_S3_BANDWIDTH_LIMIT="6", LIFEOS_S3_CONCURRENCY="1")
    app = make_app(lifeos_env.vars["LIFEOS_REDIS_URL"])
    steps, ref = backup_chain(app, "json", "crash", "test")
    steps.apply_async()
    catalog = lifeos_env.catalog()
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, worker.log()
        backup_id = AsyncResult(ref.create_task_id, app=app).result
        row = catalog.get(backup_id) if isinstance(backup_id, str) else None
        if row and row.offsite_upload_id and state.recorded_parts(catalog, row.offsite_upload_id):
            break
        time.sleep(0.05)
    worker.kill()  # mid-upload, as a crash or OOM kill would

    row = catalog.get(backup_id)
    assert row.status == "verified" and row.offsite_status == "uploading"
    recorded = state.recorded_parts(catalog, row.offsite_upload_id or "")
    assert 1 <= len(recorded) < 4
    assert [u["UploadId"] for u in s3_bucket.uploads()] == [row.offsite_upload_id]
    redis = lifeos_env.redis()
    while redis.exists(f"lifeos:lock:upload:{backup_id}"):  # the dead worker's lock expires
        assert time.monotonic() < deadline
        time.sleep(0.2)

    sent: list[int] = []
    send = upload_module._send_part

    def counting(job, upload_id, part):  # type: ignore[no-untyped-def]
        sent.append(part.number)
        return send(job, upload_id, part)

    monkeypatch.setattr(upload_module, "_send_part", counting)
    setenv(lifeos_env, monkeypatch, LIFEOS_S3_BANDWIDTH_LIMIT="")
    report = sync(lifeos_env.settings(), catalog, redis_locks(lifeos_env))
    assert report.uploaded == [backup_id] and report.aborted == []
    assert sorted(sent) == [n for n in (1, 2, 3, 4) if n not in recorded]  # only what was missing
    assert s3_bucket.uploads() == []
    done = catalog.get(backup_id)
    assert done.offsite_status == "uploaded" and done.offsite_upload_id is None
    assert state.recorded_parts(catalog, row.offsite_upload_id or "") == {}
    key = archive_key(s3_bucket, lifeos_env, backup_id)
    assert hashlib.sha256(s3_bucket.get(key)).hexdigest() == done.sha256


def test_orphan_multipart_uploads_are_aborted(lifeos_env: LifeosEnv, s3_bucket: Bucket) -> None:
    make_tree(lifeos_env.app_dir, files=5)
    kept = uploaded_backup(lifeos_env)
    time.sleep(1)
    gone = good_backup(lifeos_env)
    client, bucket = s3_bucket.client, s3_bucket.name
    # Never recorded (a crash between CreateMultipartUpload and its catalog record) ...
    stray = f"{s3_bucket.prefix}/json/json_backup_20200101_000000.tar.zst"
    upload = client.create_multipart_upload(Bucket=bucket, Key=stray)["UploadId"]
    client.upload_part(Bucket=bucket, Key=stray, UploadId=upload, PartNumber=1, Body=b"x" * 1000)
    # ... and recorded for a backup whose local copy has since been rotated away.
    key = archive_key(s3_bucket, lifeos_env, gone)
    recorded = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    catalog = lifeos_env.catalog()
    catalog.update(gone, status="deleted")
    state.mark(catalog, gone, state.UPLOADING, upload_id=recorded)  # its copy on the target s3

    report = sync(lifeos_env.settings(), catalog, redis_locks(lifeos_env))
    assert sorted(report.aborted) == sorted([stray, key])
    assert s3_bucket.uploads() == []
    assert catalog.get(gone).offsite_upload_id is None
    assert catalog.get(kept).offsite_status == "uploaded"


# --- remote retention and operator controls -------------------------------------------------------


def test_remote_retention_never_deletes_the_newest_verified_remote_copy(
    lifeos_env: LifeosEnv, s3_bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(lifeos_env.app_dir, files=5)
    ids = []
    for _ in range(3):
        ids.append(uploaded_backup(lifeos_env))
        time.sleep(1)
    newest_local = good_backup(lifeos_env)  # its upload failed: not a remote copy
    catalog = lifeos_env.catalog()
    catalog.update(newest_local, offsite_status="failed", offsite_error="endpoint down")
    for backup_id in ids:  # every remote copy is older than the policy keeps
        catalog.update(backup_id, created_at=catalog.get(backup_id).created_at - timedelta(days=10))
    setenv(lifeos_env, monkeypatch, LIFEOS_RETENTION_OFFSITE="within=1d")
    before = s3_bucket.keys()

    dry = cli(lifeos_env, "offsite", "rotate", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would delete") == 2 and ids[2] not in dry.stdout
    assert s3_bucket.keys() == before

    done = cli(lifeos_env, "offsite", "rotate")
    assert done.returncode == 0, done.stderr
    assert s3_bucket.keys() == sorted(
        [manifest_key(s3_bucket, ids[2]), archive_key(s3_bucket, lifeos_env, ids[2])]
    )
    rows = listed(lifeos_env)
    assert [rows[i]["offsite_status"] for i in ids] == ["deleted", "deleted", "uploaded"]
    assert [rows[i]["location"] for i in ids] == ["local", "local", "both"]  # local untouched
    assert rows[newest_local]["location"] == "local"


def test_object_lock_and_bandwidth_limit(
    lifeos_env: LifeosEnv,
    s3_bucket: Bucket,
    moto_server: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_tree(lifeos_env.app_dir, files=5)
    add_blob(lifeos_env, 8)
    backup_id = good_backup(lifeos_env)
    setenv(lifeos_env, monkeypatch, LIFEOS_S3_OBJECT_LOCK_DAYS="7")
    with pytest.raises(ConfigError, match="does not support Object Lock"):
        upload_backup(backup_id, lifeos_env.settings(), lifeos_env.catalog())

    locked = new_bucket(moto_server, object_lock=True)
    setenv(lifeos_env, monkeypatch, LIFEOS_S3_BUCKET=locked.name, LIFEOS_S3_BANDWIDTH_LIMIT="4")
    started = time.monotonic()
    done = upload_backup(backup_id, lifeos_env.settings(), lifeos_env.catalog())
    elapsed = time.monotonic() - started
    assert done is not None and done.size > 8 * MIB
    assert elapsed >= done.size / 4e6 * 0.9, elapsed  # 4 MB/s at most
    soon = datetime.now(UTC) + timedelta(days=7)
    for key in (done.key, manifest_key(locked, backup_id)):
        head = locked.client.head_object(Bucket=locked.name, Key=key)
        assert head["ObjectLockMode"] == "GOVERNANCE"
        until = head["ObjectLockRetainUntilDate"]
        assert abs((until - soon).total_seconds()) < 600, (key, until)


# --- disaster recovery ----------------------------------------------------------------------------


PG_SCHEMA = """
CREATE TABLE characters (id serial PRIMARY KEY, name text NOT NULL, traits jsonb);
CREATE TABLE outfits (id serial PRIMARY KEY, character_id int REFERENCES characters, name text);
INSERT INTO characters (name, traits)
SELECT 'Zoë ' || g, jsonb_build_object('level', g) FROM generate_series(1, 200) g;
INSERT INTO outfits (character_id, name) SELECT 1 + g % 200, 'outfit ' || g
FROM generate_series(1, 300) g;
"""


CANARY = '{"note": "lifeos-plaintext-canary-5e1f"}\n'


def pg_content(url: str) -> list[object]:
    with psycopg.connect(url) as conn:
        return [
            conn.execute(
                f"SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {table} t"
            ).fetchone()
            for table in ("characters", "outfits")
        ]


def test_total_loss_rebuild_from_offsite_and_restore(
    lifeos_env: LifeosEnv,
    s3_bucket: Bucket,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pg_cluster: PostgresCluster,
) -> None:
    key_file, _identity, recipient = keypair(tmp_path / "safe")
    setenv(lifeos_env, monkeypatch, LIFEOS_ENCRYPTION_RECIPIENTS=recipient)
    originals: dict[str, Path] = {}
    for seed in (1, 2):
        for top in ("data", "presets", "configs"):
            shutil.rmtree(lifeos_env.app_dir / top, ignore_errors=True)
        make_tree(lifeos_env.app_dir, files=15 + seed, seed=seed)
        (lifeos_env.app_dir / "data" / "characters" / "zoë-canary.json").write_text(CANARY)
        backup_id = uploaded_backup(lifeos_env)
        originals[backup_id] = tmp_path / "originals" / backup_id
        shutil.copytree(lifeos_env.app_dir, originals[backup_id], symlinks=True)
        time.sleep(1)
    restored_db = f"lifeos_restored_{os.getpid()}_{time.monotonic_ns() % 10**8}"
    with temporary_database(pg_cluster, prefix="lifeos_src_") as source:
        with psycopg.connect(source.url, autocommit=True) as conn:
            conn.execute(PG_SCHEMA)
        setenv(
            lifeos_env,
            monkeypatch,
            LIFEOS_DATABASE_URL=source.url,
            LIFEOS_PG_BIN_DIR=str(pg_cluster.bindir),
        )
        settings, catalog = lifeos_env.settings(), lifeos_env.catalog()
        pg_id = create_backup("postgres", settings, catalog).backup_id
        assert verify_backup(pg_id, settings, catalog).verified_scope == "ciphertext"
        assert upload_backup(pg_id, settings, catalog) is not None
        expected_pg = pg_content(source.url)
    assert s3_bucket.get(archive_key(s3_bucket, lifeos_env, pg_id)).startswith(b"age-encryption")
    # Nothing in the bucket names or holds a member: no path, no content, no table, no row.
    members = {
        str(p.relative_to(original)).encode()
        for original in originals.values()
        for p in original.rglob("*")
        if p.is_file() and p.relative_to(original).parts[0] in ("data", "presets", "configs")
    }
    secrets = {*members, *(m.rsplit(b"/", 1)[-1] for m in members), CANARY.encode()}
    secrets |= {b"characters", b"outfits", "Zoë".encode(), b"outfit 1"}
    assert len(members) == 18  # 17 generated files and the canary
    for key in list(s3_bucket.keys()):
        head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=key)
        visible = b"\n".join(
            [key.encode(), s3_bucket.get(key), json.dumps(head["Metadata"]).encode()]
        )
        assert [s for s in secrets if s in visible] == [], key

    shutil.rmtree(lifeos_env.backup_root)  # the repository and its SQLite catalog are gone
    # Without the key the bucket tells ids, kinds, times and sizes, and that the key is needed.
    blind = cli(lifeos_env, "catalog", "rebuild", "--from", "offsite")
    assert blind.returncode == 1 and "Traceback" not in blind.stderr
    assert blind.stderr.startswith("error: 3 of the 3 backups in the bucket have sealed manifests")
    assert "LIFEOS_ENCRYPTION_IDENTITY_FILE" in blind.stderr
    assert len(blind.stderr.strip().splitlines()) == 1, blind.stderr
    for backup_id in [*originals, pg_id]:
        assert backup_id in blind.stdout
    assert "postgres" in blind.stdout and "sealed" in blind.stdout
    assert not (lifeos_env.backup_root / "catalog.sqlite3").exists()  # nothing rebuilt
    setenv(lifeos_env, monkeypatch, LIFEOS_ENCRYPTION_IDENTITY_FILE=str(key_file))  # from the safe
    rebuilt = cli(lifeos_env, "catalog", "rebuild", "--from", "offsite")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "3 backups found" in rebuilt.stdout
    rows = listed(lifeos_env)
    assert {i: (r["kind"], r["status"], r["location"]) for i, r in rows.items()} == {
        **{i: ("json", "verified", "offsite") for i in originals},
        pg_id: ("postgres", "verified", "offsite"),
    }
    # Backups known only off-site are neither "verified" again nor rotated away locally.
    some_id = next(iter(originals))
    checked = cli(lifeos_env, "verify", some_id)
    assert checked.returncode == 1 and "is only off-site" in checked.stderr
    setenv(lifeos_env, monkeypatch, LIFEOS_RETENTION_JSON="last=1")
    rotated = cli(lifeos_env, "rotate", "--kind", "json")
    assert rotated.returncode == 0, rotated.stderr
    assert listed(lifeos_env) == rows
    for backup_id, original in originals.items():
        target = tmp_path / "restored" / backup_id
        restored = cli(
            lifeos_env,
            *("restore", "json", backup_id, "--target", str(target), "--from", "offsite"),
        )
        assert restored.returncode == 0, restored.stderr
        assert tree(target) == tree(original)
    try:
        restored = cli(
            lifeos_env,
            *("restore", "postgres", pg_id, "--database", restored_db, "--create"),
            *("--from", "offsite"),
        )
        assert restored.returncode == 0, restored.stderr
        assert pg_content(pg_cluster.url(restored_db)) == expected_pg
    finally:
        pg_cluster.drop_database(restored_db)
    leftovers = list((lifeos_env.backup_root / ".state").glob("offsite-*"))
    assert leftovers == []  # downloads are removed after the restore


def test_offsite_commands_without_bucket_fail_clearly(lifeos_env: LifeosEnv) -> None:
    make_tree(lifeos_env.app_dir, files=5)
    backup_id = good_backup(lifeos_env)
    assert upload_backup(backup_id, lifeos_env.settings(), lifeos_env.catalog()) is None  # no-op
    for args in (("offsite", "sync"), ("catalog", "rebuild", "--from", "offsite")):
        result = cli(lifeos_env, *args)
        assert result.returncode == 1, args
        assert result.stderr.startswith("error: off-site storage is not configured")
        assert "LIFEOS_S3_BUCKET" in result.stderr and "Traceback" not in result.stderr
    result = cli(
        lifeos_env, "restore", "json", backup_id, "--target", "/tmp/x", "--from", "offsite"
    )
    assert result.returncode == 1 and "has no off-site copy" in result.stderr
