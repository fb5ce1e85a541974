"""Off-site building blocks without a server: error mapping, part plans, throttle, settings,
remote manifests read through a file."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from beat_schedule import build_schedule
from lifeos_backup.core.errors import (
    ConfigError,
    DecryptionKeyError,
    OffsiteError,
    PermanentError,
    RetryableError,
    VerificationFailed,
)
from lifeos_backup.core.settings import Settings
from lifeos_backup.formats.manifest import ArchiveInfo, Compression, Manifest
from lifeos_backup.storage.catalog import Backup
from lifeos_backup.storage.offsite import upload
from lifeos_backup.storage.offsite.s3 import translate
from lifeos_backup.storage.offsite.state import location
from lifeos_backup.storage.offsite.store import ObjectInfo, same_checksum
from lifeos_backup.storage.offsite.upload import (
    MIB,
    Plans,
    RangeReader,
    Throttle,
    part_size_for,
    plan_upload,
    remote_mismatch,
)


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


@pytest.mark.parametrize(
    ("exc", "expected", "words"),
    [
        (EndpointConnectionError(endpoint_url="http://x"), OffsiteError, "unreachable"),
        (client_error("SlowDown", 503), OffsiteError, "busy"),
        (client_error("InternalError", 500), OffsiteError, "busy"),
        (client_error("InvalidAccessKeyId", 403), ConfigError, "credentials"),
        (client_error("SignatureDoesNotMatch", 403), ConfigError, "credentials"),
        (client_error("NoSuchBucket", 404), ConfigError, "does not exist"),
        (NoCredentialsError(), ConfigError, "no credentials"),
        (client_error("InvalidArgument"), PermanentError, "refused"),
    ],
)
def test_botocore_errors_become_ours(exc: Exception, expected: type, words: str) -> None:
    ours = translate(exc, "upload of x", "s3://b")
    assert type(ours) is expected and words in str(ours)
    assert isinstance(ours, RetryableError) == (expected is OffsiteError)


def test_part_size_grows_only_beyond_ten_thousand_parts() -> None:
    assert part_size_for(100 * MIB, 64) == 64 * MIB
    huge = 2 << 40  # 2 TiB
    size = part_size_for(huge, 5)
    assert size % MIB == 0 and -(-huge // size) <= 10_000


def _manifest(path: Path) -> Manifest:
    data = path.read_bytes()
    now = datetime.now(UTC)
    return Manifest(
        backup_id="json_backup_20260101_000000",
        kind="json",
        created_at=now,
        finished_at=now,
        host="h",
        tool_version="t",
        compression=Compression(algorithm="zstd", level=3),
        archive=ArchiveInfo(
            name=path.name, size=len(data), sha256=hashlib.sha256(data).hexdigest()
        ),
    )


def test_plan_hashes_parts_and_refuses_a_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "json_backup_20260101_000000.tar.zst"
    data = os.urandom(2 * MIB + 123)
    path.write_bytes(data)
    manifest = _manifest(path)
    plan = plan_upload(path, manifest, MIB)
    assert [(p.number, p.offset, p.size) for p in plan.parts] == [
        (1, 0, MIB),
        (2, MIB, MIB),
        (3, 2 * MIB, 123),
    ]
    digests = [hashlib.sha256(data[p.offset : p.offset + p.size]).digest() for p in plan.parts]
    composite = base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode()
    assert plan.expected_checksum == f"{composite}-3"
    single = plan_upload(path, manifest, 4 * MIB)
    assert (
        single.single
        and single.expected_checksum == base64.b64encode(hashlib.sha256(data).digest()).decode()
    )
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(VerificationFailed, match="changed since it was verified"):
        plan_upload(path, manifest, MIB)


def test_targets_side_by_side_share_one_hashing_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three targets' threads asking at once get one plan per part size, made by one pass."""
    path = tmp_path / "json_backup_20260101_000000.tar.zst"
    path.write_bytes(os.urandom(3 * MIB))
    manifest = _manifest(path)
    passes: list[int] = []
    everyone = threading.Barrier(3)

    def counted(where: Path, wanted: Manifest, part_size: int) -> upload.UploadPlan:
        passes.append(part_size)
        return plan_upload(where, wanted, part_size)

    monkeypatch.setattr(upload, "plan_upload", counted)
    plans = Plans()

    def ask(part_size: int) -> upload.UploadPlan:
        everyone.wait()
        return plans.get(path, manifest, part_size)

    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(ask, [MIB, MIB, 2 * MIB]))
    assert sorted(passes) == [MIB, 2 * MIB]
    assert got[0] is got[1] and len(got[0].parts) == 3 and len(got[2].parts) == 2
    path.write_bytes(os.urandom(3 * MIB))  # a failed plan is not kept: each asker sees it
    fresh = Plans()
    for _ in range(2):
        with pytest.raises(VerificationFailed):
            fresh.get(path, manifest, MIB)


def test_empty_archive_is_one_empty_part(tmp_path: Path) -> None:
    path = tmp_path / "json_backup_20260101_000000.tar.gz"
    path.write_bytes(b"")
    plan = plan_upload(path, _manifest(path), MIB)
    assert plan.single and [p.size for p in plan.parts] == [0]


def test_range_reader_reads_its_range_and_rewinds(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * 4)
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = RangeReader(fd, 10, 20, None)
        assert reader.read(5) == bytes(range(10, 15)) and reader.tell() == 5
        assert reader.read() == bytes(range(15, 30)) and reader.read() == b""
        assert reader.seek(0) == 0 and len(reader.read(100)) == 20
        assert reader.seek(0, os.SEEK_END) == 20 and len(reader) == 20
    finally:
        os.close(fd)


def test_throttle_holds_the_rate_across_calls() -> None:
    throttle = Throttle(10 * 1_000_000)  # 10 MB/s
    started = time.monotonic()
    for _ in range(4):
        throttle.consume(1_000_000)
    assert time.monotonic() - started >= 0.28  # the first MB is free, three more need 0.3 s


def test_remote_mismatch_names_the_difference() -> None:
    good = ObjectInfo(size=10, sha256="ab", checksum="Zm9v-2")
    assert remote_mismatch(good, 10, "ab", "Zm9v") == ""  # "-2": a service's composite suffix
    assert "missing" in remote_mismatch(None, 10, "ab", None)
    assert "bytes" in remote_mismatch(good, 11, "ab", None)
    assert "metadata" in remote_mismatch(good, 10, "cd", None)
    assert "checksum" in remote_mismatch(good, 10, "ab", "YmFy")
    assert "no SHA-256" in remote_mismatch(replace(good, checksum=None), 10, "ab", "Zm9v")
    assert same_checksum("Zm9v-3", "Zm9v") and not same_checksum(None, "Zm9v")


def test_settings_offsite_switch_and_empty_endpoint() -> None:
    assert not Settings().offsite_enabled
    settings = Settings(s3_bucket="b", s3_endpoint_url="", s3_bandwidth_limit="")
    assert settings.offsite_enabled and settings.s3_endpoint_url is None
    assert settings.s3_bandwidth_limit is None
    with pytest.raises(ValueError, match="GOVERNANCE or COMPLIANCE"):
        Settings(s3_object_lock_mode="forever")
    with pytest.raises(ValueError, match="age public keys"):
        Settings(encryption_recipients="age1typo")
    with pytest.raises(ValueError):
        Settings(s3_part_size_mb=4)  # below S3's 5 MiB minimum


def test_sync_is_scheduled_only_with_a_bucket() -> None:
    assert "offsite-sync" not in build_schedule(Settings())
    job = build_schedule(Settings(s3_bucket="b"))["offsite-sync"]
    assert job["task"] == "lifeos.offsite.sync"
    assert job["schedule"].hour == {5} and job["schedule"].minute == {0}


def test_location(tmp_path: Path) -> None:
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "here.tar.zst").write_bytes(b"x")
    now = datetime.now(UTC)

    def row(path: str, status: str, offsite: str | None) -> Backup:
        return Backup(
            id="i", kind="json", status=status, path=path, created_at=now, offsite_status=offsite
        )

    assert location(row("json/here.tar.zst", "verified", None), tmp_path) == "local"
    assert location(row("json/here.tar.zst", "verified", "uploaded"), tmp_path) == "both"
    assert location(row("json/gone.tar.zst", "verified", "uploaded"), tmp_path) == "offsite"
    assert location(row("json/here.tar.zst", "deleted", "uploaded"), tmp_path) == "offsite"
    assert location(row("json/gone.tar.zst", "deleted", "damaged"), tmp_path) == "none"


class _Body:
    """A GET's body that can only be streamed: a `read()` of the whole would fail the test."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.chunks = 0

    def read(self, size: int) -> bytes:  # bounded reads only, as a sealed manifest is opened
        assert 0 <= size <= 1 << 20, size
        self.chunks += 1
        data, self.data = self.data[:size], self.data[size:]
        return data

    def iter_chunks(self, size: int) -> Iterator[bytes]:
        for start in range(0, len(self.data), 7):  # small chunks: the file is assembled
            self.chunks += 1
            yield self.data[start : start + 7]


class _Store:
    """The reads of an object store (store.ObjectStore) from memory: streamed only."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.bodies: list[_Body] = []

    def open(self, key: str) -> _Body:
        self.bodies.append(_Body(self.objects[key]))
        return self.bodies[-1]

    def chunks(self, key: str, start: int = 0, size: int = 1 << 20) -> Iterator[bytes]:
        assert start == 0
        return self.open(key).iter_chunks(size)


def test_remote_manifest_goes_through_a_file_and_its_entries_stream_from_it(
    tmp_path: Path,
) -> None:
    from lifeos_backup.formats.manifest import FileEntry, write_manifest
    from lifeos_backup.storage.offsite.download import read_remote_manifest

    backup_id = "json_backup_20250101_000000"
    now = datetime(2025, 1, 1, tzinfo=UTC)
    entries = [
        FileEntry(path=f"data/item-{i:05d}.json", size=i, mode=0o644, sha256="a" * 64)
        for i in range(5000)
    ]
    local = tmp_path / "local" / f"{backup_id}.manifest.json"
    local.parent.mkdir()
    write_manifest(
        local,
        Manifest(
            backup_id=backup_id, kind="json", created_at=now, finished_at=now, host="h",
            tool_version="t", compression=Compression(algorithm="zstd", level=3),
            archive=ArchiveInfo(name=f"{backup_id}.tar.zst", size=1, sha256="c" * 64),
            files=entries,
        ),
    )
    key = f"lifeos/json/{backup_id}.manifest.json"
    client = _Store({key: local.read_bytes()})
    remote = client
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    manifest = read_remote_manifest(remote, key, scratch)  # type: ignore[arg-type]

    assert client.bodies[0].chunks > 1  # streamed, never read whole
    copy = scratch / f"{backup_id}.manifest.json"
    assert copy.read_bytes() == local.read_bytes()
    assert manifest.backup_id == backup_id and manifest.files == []  # header only in memory
    assert list(manifest.iter_files()) == entries
    copy.unlink()
    with pytest.raises(FileNotFoundError):  # the entries come from that file
        next(manifest.iter_files())


def test_a_truncated_remote_manifest_is_refused(tmp_path: Path) -> None:
    from lifeos_backup.storage.offsite.download import read_remote_manifest

    key = "lifeos/json/json_backup_20250101_000000.manifest.json"
    text = b'{"format_version":1,"backup_id":"json_backup_20250101_000000","files":[\n{"path":"a"'
    remote = _Store({key: text})
    with pytest.raises(VerificationFailed, match="unreadable"):
        read_remote_manifest(remote, key, tmp_path)  # type: ignore[arg-type]


def _key_file(folder: Path, name: str) -> tuple[Path, str]:
    from lifeos_backup.formats.crypto import generate_identity

    identity, recipient = generate_identity()
    path = folder / name
    path.write_text(identity + "\n")
    return path, recipient


def test_a_sealed_remote_manifest_opens_only_with_its_key_and_only_whole(
    tmp_path: Path,
) -> None:
    """A manifest sealed for the bucket holds no member path; its key opens it into the scratch
    folder (0600) with its entries streaming from there; no key, a wrong key, a flipped byte
    and a cut-off end are each one clear error."""
    import io

    from lifeos_backup.formats.crypto import parse_recipients, seal_file
    from lifeos_backup.formats.manifest import FileEntry, write_manifest
    from lifeos_backup.storage.offsite.download import read_remote_manifest

    backup_id = "json_backup_20250101_000000"
    now = datetime(2025, 1, 1, tzinfo=UTC)
    entries = [
        FileEntry(path=f"data/characters/zoë-{i:04d}.json", size=i, mode=0o644, sha256="a" * 64)
        for i in range(3000)
    ]
    local = tmp_path / f"{backup_id}.manifest.json"
    write_manifest(
        local,
        Manifest(
            backup_id=backup_id, kind="json", created_at=now, finished_at=now, host="h",
            tool_version="t", compression=Compression(algorithm="zstd", level=3),
            archive=ArchiveInfo(name=f"{backup_id}.tar.zst.age", size=1, sha256="c" * 64),
            files=entries,
        ),
    )  # fmt: skip
    key_file, recipient = _key_file(tmp_path, "backup.key")
    other_file, _ = _key_file(tmp_path, "other.key")
    out = io.BytesIO()
    digest, size = seal_file(local, out, parse_recipients(recipient))
    sealed = out.getvalue()
    assert (digest, size) == (hashlib.sha256(sealed).hexdigest(), len(sealed))
    assert b"characters" not in sealed and "zoë".encode() not in sealed

    key = f"lifeos/json/{backup_id}.manifest.json.age"
    flipped = bytearray(sealed)
    flipped[len(sealed) // 2] ^= 0x01
    objects = {key: sealed, "flipped": bytes(flipped), "cut": sealed[:-200]}
    remote = _Store(objects)

    def read(name: str, identity: Path | None) -> Manifest:
        scratch = tmp_path / f"scratch-{len(remote.bodies)}"
        scratch.mkdir()
        objects[key] = objects[name]
        return read_remote_manifest(remote, key, scratch, identity)  # type: ignore[arg-type]

    manifest = read(key, key_file)
    copy = tmp_path / "scratch-0" / f"{backup_id}.manifest.json"
    assert copy.read_bytes() == local.read_bytes() and copy.stat().st_mode & 0o777 == 0o600
    assert manifest.backup_id == backup_id and list(manifest.iter_files()) == entries
    assert remote.bodies[0].chunks > 3  # decrypted as it streams in

    with pytest.raises(DecryptionKeyError, match="is encrypted and no private key is configured"):
        read(key, None)
    with pytest.raises(DecryptionKeyError, match=r"cannot decrypt off-site manifest .*: no conf"):
        read(key, other_file)
    for damage in ("flipped", "cut"):
        with pytest.raises(VerificationFailed, match=r"age is damaged: .*authentication"):
            read(damage, key_file)
