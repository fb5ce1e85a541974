"""Every object store against a real service: S3 (moto server), GCS (gcp-storage-emulator) and
Azure Blob (Azurite), each a process on a free port. The same calls, the same answers."""

from __future__ import annotations

import base64
import hashlib
import io
import os

import pytest

from lifeos_backup.core.errors import ConfigError, OffsiteError, VerificationFailed
from lifeos_backup.core.settings import Settings
from lifeos_backup.core.targets import parse_targets
from lifeos_backup.storage.offsite.staged import composite
from lifeos_backup.storage.offsite.store import ObjectOptions, ObjectStore
from lifeos_backup.storage.offsite.targets import connect
from tests.support.emulators import (
    RemoteBucket,
    azure_container,
    gcs_bucket,
    s3_bucket,
)
from tests.support.services import free_port

pytestmark = pytest.mark.integration
PROVIDERS = ("s3", "gcs", "azure")


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@pytest.fixture(params=PROVIDERS)
def remote(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> tuple[RemoteBucket, ObjectStore]:
    """A fresh bucket of each provider and the store our code opens on it."""
    if request.param == "s3":
        bucket = s3_bucket(request.getfixturevalue("moto_server"))
    elif request.param == "gcs":
        bucket = gcs_bucket(request.getfixturevalue("gcs_emulator"))
    else:
        bucket = azure_container(request.getfixturevalue("azurite"))
    for var, value in bucket.env.items():
        monkeypatch.setenv(var, value)
    import json

    (target,) = parse_targets(json.dumps([bucket.target]))
    settings = Settings(backup_root=str(tmp_path), s3_max_attempts=2)  # type: ignore[arg-type]
    return bucket, connect(target, settings)


def test_objects_round_trip_with_metadata_ranges_and_listing(
    remote: tuple[RemoteBucket, ObjectStore],
) -> None:
    bucket, store = remote
    data = os.urandom(300_000)
    key = store.key("json/json_backup_20260101_020000.tar.zst")
    assert store.head(key) is None
    options = ObjectOptions(metadata={"sha256": hashlib.sha256(data).hexdigest()}, bulk=True)
    store.put(key, io.BytesIO(data), len(data), b64sha(data), options)
    info = store.head(key)
    assert info is not None and info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.checksum == b64sha(data)
    assert b"".join(store.chunks(key)) == data
    assert b"".join(store.chunks(key, 1000, 65536)) == data[1000:]
    assert store.open(key).read(10) == data[:10]
    assert list(store.listing(store.root)) == [(key, len(data))]
    assert bucket.names() == [key]
    store.delete(key)
    store.delete(key)  # gone already: fine
    assert store.head(key) is None


# S3 refuses such a body itself (ChecksumSHA256); the GCS and Azure stores check it.
@pytest.mark.parametrize("remote", ["gcs", "azure"], indirect=True)
def test_a_body_that_is_not_the_planned_one_is_refused_and_not_left(
    remote: tuple[RemoteBucket, ObjectStore],
) -> None:
    bucket, store = remote
    key = store.key("json/json_backup_20260101_020000.tar.zst")
    with pytest.raises(VerificationFailed):
        store.put(key, io.BytesIO(b"changed"), 7, b64sha(b"planned"), ObjectOptions())
    assert store.head(key) is None and bucket.names() == []


def test_multipart_upload_resumes_from_listed_parts_and_completes(
    remote: tuple[RemoteBucket, ObjectStore],
) -> None:
    bucket, store = remote
    parts = [os.urandom(5 << 20), os.urandom(5 << 20), os.urandom(1 << 20)]
    key = store.key("json/json_backup_20260101_020000.tar.zst")
    options = ObjectOptions(metadata={"sha256": hashlib.sha256(b"".join(parts)).hexdigest()})
    upload_id = store.start_upload(key, options)
    etag1 = store.send_part(
        key, upload_id, 1, io.BytesIO(parts[0]), len(parts[0]), b64sha(parts[0])
    )
    # After a crash: the upload is listed, its finished part is there.
    assert (key, upload_id) in list(store.uploads(store.root))
    held = store.parts(key, upload_id)
    assert held is not None and set(held) == {1} and held[1].etag == etag1
    assert held[1].size == len(parts[0])
    assert store.head(key) is None  # nothing half-written visible
    assert [k for k in bucket.names() if k.startswith(store.root)] == []
    etags = {1: etag1}
    for number in (2, 3):
        data = parts[number - 1]
        etags[number] = store.send_part(
            key, upload_id, number, io.BytesIO(data), len(data), b64sha(data)
        )
    sums = [b64sha(p) for p in parts]
    store.complete(key, upload_id, [(n, etags[n], sums[n - 1]) for n in (1, 2, 3)])
    info = store.head(key)
    assert info is not None and info.size == sum(map(len, parts))
    assert info.sha256 == options.metadata["sha256"]
    assert (
        info.checksum == composite(sums)
        or info.checksum.split("-")[0] == composite(sums).split("-")[0]
    )
    assert b"".join(store.chunks(key)) == b"".join(parts)
    assert list(store.uploads(store.root)) == []
    assert bucket.names() == [key]  # no staging objects left


def test_an_aborted_upload_leaves_nothing(remote: tuple[RemoteBucket, ObjectStore]) -> None:
    bucket, store = remote
    key = store.key("json/json_backup_20260101_020000.tar.zst")
    upload_id = store.start_upload(key, ObjectOptions())
    data = os.urandom(5 << 20)
    store.send_part(key, upload_id, 1, io.BytesIO(data), len(data), b64sha(data))
    store.abort(key, upload_id)
    store.abort(key, upload_id)  # already gone: fine
    assert store.parts(key, upload_id) is None
    assert list(store.uploads(store.root)) == [] and bucket.names() == []


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_unreachable_service_is_a_retryable_offsite_error(
    provider: str, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    import json

    endpoint = f"http://127.0.0.1:{free_port()}"
    raw = {"name": "down", "provider": provider, "bucket": "b", "endpoint": endpoint}
    if provider == "azure":
        raw["endpoint"] = endpoint + "/devstoreaccount1"
        raw["credentials"] = {"account_key": "DOWN_KEY"}
        monkeypatch.setenv("DOWN_KEY", base64.b64encode(b"k" * 32).decode())
    if provider == "s3":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    (target,) = parse_targets(json.dumps([raw]))
    settings = Settings(backup_root=str(tmp_path), s3_max_attempts=1)  # type: ignore[arg-type]
    store = connect(target, settings)
    with pytest.raises(OffsiteError) as caught, store.errors("HEAD"):
        store.head(store.key("x"))
    assert "down" in str(caught.value) or endpoint in str(caught.value)


def test_targets_refuse_secrets_and_unknown_providers() -> None:
    import json

    with pytest.raises(ConfigError) as caught:
        parse_targets(
            json.dumps(
                [
                    {
                        "name": "a",
                        "provider": "s3",
                        "bucket": "b",
                        "credentials": {"secret_access_key": "wJalr/XUtnFEMI+K7MDENG"},
                    }
                ]
            )
        )
    assert "wJalr" not in str(caught.value) and "variable" in str(caught.value)
    with pytest.raises(ConfigError):
        parse_targets('[{"name": "a", "provider": "ftp", "bucket": "b"}]')
    with pytest.raises(ConfigError):
        parse_targets(
            '[{"name": "a", "provider": "s3", "bucket": "b"},'
            ' {"name": "a", "provider": "gcs", "bucket": "c"}]'
        )


def test_the_example_targets_file_parses() -> None:
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "offsite-targets.toml"
    targets = parse_targets(str(example))
    assert [(t.name, t.provider) for t in targets] == [
        ("minio", "s3"),
        ("gcs-eu", "gcs"),
        ("azure-weu", "azure"),
    ]
    assert targets[2].bandwidth_limit == 20 and targets[1].retention == "within=30d"
