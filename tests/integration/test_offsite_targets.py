"""Several off-site targets at once: S3 (moto server), GCS (gcp-storage-emulator) and Azure Blob
(Azurite), each a real service on a free port; copies per target in the catalog."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from lifeos_backup.core.errors import LifeosError
from lifeos_backup.jobs.backups import create_backup, verify_backup
from lifeos_backup.jobs.source import backup_source
from lifeos_backup.monitoring.health import evaluate_health
from lifeos_backup.storage.offsite import state
from lifeos_backup.storage.offsite.download import rebuild_from_offsite
from lifeos_backup.storage.offsite.sync import sync
from lifeos_backup.storage.offsite.upload import upload_backup
from tests.integration.test_offsite import CANARY, cli, keypair, no_locks, setenv, tree
from tests.support.emulators import RemoteBucket, azure_container, gcs_bucket, s3_bucket
from tests.support.trees import make_tree
from tests.support.worker import LifeosEnv

pytestmark = pytest.mark.integration


def configure(env: LifeosEnv, monkeypatch: pytest.MonkeyPatch, buckets: list[RemoteBucket]) -> None:
    extra: dict[str, str] = {"LIFEOS_S3_PART_SIZE_MB": "5", "LIFEOS_S3_MAX_ATTEMPTS": "2"}
    for bucket in buckets:
        extra.update(bucket.env)
    extra["LIFEOS_OFFSITE_TARGETS"] = json.dumps([b.target for b in buckets])
    setenv(env, monkeypatch, **extra)


def bucket_for(request: pytest.FixtureRequest, provider: str) -> RemoteBucket:
    if provider == "s3":
        return s3_bucket(request.getfixturevalue("moto_server"), "s3-eu")
    if provider == "gcs":
        return gcs_bucket(request.getfixturevalue("gcs_emulator"))
    return azure_container(request.getfixturevalue("azurite"))


def good_backup(env: LifeosEnv) -> str:
    settings, catalog = env.settings(), env.catalog()
    backup_id = create_backup("json", settings, catalog).backup_id
    verify_backup(backup_id, settings, catalog)
    return backup_id


def test_three_targets_get_every_copy_and_one_down_catches_up(
    lifeos_env: LifeosEnv, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    buckets = [bucket_for(request, p) for p in ("s3", "gcs", "azure")]
    configure(lifeos_env, monkeypatch, buckets)
    make_tree(lifeos_env.app_dir, files=8)
    (lifeos_env.app_dir / "data" / "blob.bin").write_bytes(
        os.urandom(11 << 20)
    )
    first = good_backup(lifeos_env)
    assert upload_backup(first, lifeos_env.settings(), lifeos_env.catalog()) is not None
    held = state.copies(lifeos_env.catalog(), first)
    assert {t: c.status for t, c in held.items()} == {
        "s3-eu": "uploaded",
        "gcs-eu": "uploaded",
        "azure-weu": "uploaded",
    }
    for bucket in buckets:  # multipart on each: archive and manifest, nothing staged left
        names = bucket.names()
        assert any(n.endswith(".tar.zst") for n in names), (bucket.provider, names)
        assert any(n.endswith(".manifest.json") for n in names), (bucket.provider, names)
        assert not [n for n in names if ".uploads/" in n], (bucket.provider, names)

    # Azure becomes unreachable: the other targets still get the next backup.
    down = json.loads(lifeos_env.vars["LIFEOS_OFFSITE_TARGETS"])
    working_url = down[2]["endpoint"]
    down[2]["endpoint"] = "http://127.0.0.1:9/devstoreaccount1"
    setenv(lifeos_env, monkeypatch, LIFEOS_OFFSITE_TARGETS=json.dumps(down))
    make_tree(lifeos_env.app_dir, files=9, seed=2)
    second = good_backup(lifeos_env)
    with pytest.raises(LifeosError) as caught:
        upload_backup(second, lifeos_env.settings(), lifeos_env.catalog())
    assert "azure-weu" in str(caught.value)
    held = state.copies(lifeos_env.catalog(), second)
    assert held["s3-eu"].status == held["gcs-eu"].status == "uploaded"
    assert held["azure-weu"].status == "failed"
    row = lifeos_env.catalog().get(second)
    assert row.offsite_status == "uploaded" and "azure-weu" in (row.offsite_error or "")
    status = cli(lifeos_env, "status", "--json", LIFEOS_HEALTH_OFFSITE_MAX_LAG_HOURS="0")
    report = json.loads(status.stdout)
    behind = {t["name"]: t for t in report["offsite_targets"]}
    assert behind["azure-weu"]["behind"] == 1 and behind["s3-eu"]["behind"] == 0
    lagging = {c["key"]: c for c in report["conditions"]}
    assert "offsite_target_behind:s3-eu" not in lagging
    condition = lagging["offsite_target_behind:azure-weu"]
    assert condition["severity"] == "degraded"
    assert condition["detail"].startswith("azure-weu 1 backup behind since ")
    assert "offsite_lag" not in {c["name"] for c in report["conditions"]}  # a copy exists
    plain = cli(lifeos_env, "status", LIFEOS_HEALTH_OFFSITE_MAX_LAG_HOURS="0", COLUMNS="200")
    assert "Traceback" not in plain.stderr
    assert "off-site: azure-weu 1 backup behind since" in plain.stdout
    assert "s3-eu 0" not in plain.stdout and "gcs-eu" not in plain.stdout
    listed = json.loads(cli(lifeos_env, "list", "--json").stdout)
    targets = {r["id"]: r["offsite_targets"] for r in listed}
    assert targets[second] == {"s3-eu": "uploaded", "gcs-eu": "uploaded", "azure-weu": "failed"}

    # It returns: the sync uploads only what it lacks.
    down[2]["endpoint"] = working_url
    setenv(lifeos_env, monkeypatch, LIFEOS_OFFSITE_TARGETS=json.dumps(down))
    report = sync(lifeos_env.settings(), lifeos_env.catalog(), no_locks)
    assert report.failed == {} and report.uploaded == [second]
    assert state.copies(lifeos_env.catalog(), second)["azure-weu"].status == "uploaded"
    setenv(lifeos_env, monkeypatch, LIFEOS_HEALTH_OFFSITE_MAX_LAG_HOURS="0")
    conditions = evaluate_health(lifeos_env.settings(), lifeos_env.catalog())
    assert not [c for c in conditions if c.name == "offsite_target_behind"]  # caught up: cleared

    # Restore from one chosen target, and from the first healthy one.
    settings, catalog = lifeos_env.settings(), lifeos_env.catalog()
    for source in ("gcs-eu", "azure-weu", "offsite"):
        with backup_source(second, settings, catalog, source) as (archive, manifest):
            assert manifest.backup_id == second and archive.stat().st_size == manifest.archive.size

    # The local archive is gone, GCS loses its copy and Azure's is damaged: the sync repairs
    # both from S3 (downloaded, checked against the manifest, uploaded again).
    archive = settings.backup_root / catalog.get(second).path
    good = archive.read_bytes()
    archive.unlink()
    lost = next(n for n in buckets[1].names() if second in n and n.endswith(".tar.zst"))
    buckets[1].delete(lost)
    hurt = next(n for n in buckets[2].names() if second in n and n.endswith(".tar.zst"))
    buckets[2].put(hurt, b"not the archive")
    report = sync(lifeos_env.settings(), lifeos_env.catalog(), no_locks)
    assert set(report.problems) == {second} and report.failed == {}, report
    assert sorted(report.repaired) == [
        f"{second} on azure-weu from s3-eu",
        f"{second} on gcs-eu from s3-eu",
    ]
    held = state.copies(lifeos_env.catalog(), second)
    assert {t: c.status for t, c in held.items()} == {
        "s3-eu": "uploaded",
        "gcs-eu": "uploaded",
        "azure-weu": "uploaded",
    }
    assert buckets[1].get(lost) == good and buckets[2].get(hurt) == good
    assert not list((lifeos_env.settings().state_dir).rglob("*.tar.zst"))  # scratch removed
    table = cli(lifeos_env, "list", COLUMNS="250")
    assert "Traceback" not in table.stderr
    line = next(x for x in table.stdout.splitlines() if second in x)
    assert "azure-weu+gcs-eu+s3-eu" in line and "offsite" in line, line
    line = next(x for x in table.stdout.splitlines() if first in x)
    assert "azure-weu+gcs-eu+s3-eu" in line and "both" in line, line


@pytest.mark.parametrize("provider", ["s3", "gcs", "azure"])
def test_total_loss_recovery_from_one_provider_with_nothing_readable(
    provider: str,
    lifeos_env: LifeosEnv,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    bucket = bucket_for(request, provider)
    configure(lifeos_env, monkeypatch, [bucket])
    key_file, _identity, recipient = keypair(tmp_path / "safe")
    setenv(lifeos_env, monkeypatch, LIFEOS_ENCRYPTION_RECIPIENTS=recipient)
    make_tree(lifeos_env.app_dir, files=12, seed=3)
    (lifeos_env.app_dir / "data" / "characters" / "zoë-canary.json").write_text(CANARY)
    backup_id = good_backup(lifeos_env)
    assert upload_backup(backup_id, lifeos_env.settings(), lifeos_env.catalog()) is not None
    original = tmp_path / "original"
    shutil.copytree(lifeos_env.app_dir, original, symlinks=True)
    members = {
        str(p.relative_to(original)).encode()
        for p in original.rglob("*")
        if p.is_file() and p.relative_to(original).parts[0] in ("data", "presets", "configs")
    }
    secrets = {*members, *(m.rsplit(b"/", 1)[-1] for m in members), CANARY.encode()}
    names = bucket.names()
    assert any(n.endswith(".manifest.json.age") for n in names), names
    for name in names:
        visible = b"\n".join(
            [name.encode(), bucket.get(name), json.dumps(bucket.metadata(name)).encode()]
        )
        assert [s for s in secrets if s in visible] == [], name

    shutil.rmtree(lifeos_env.backup_root)  # everything local is gone
    setenv(lifeos_env, monkeypatch, LIFEOS_ENCRYPTION_IDENTITY_FILE=str(key_file))
    rebuilt = rebuild_from_offsite(lifeos_env.settings(), lifeos_env.catalog())
    assert rebuilt == [backup_id]
    target = tmp_path / "restored"
    restored = cli(
        lifeos_env, "restore", "json", backup_id, "--target", str(target), "--from", "offsite"
    )
    assert restored.returncode == 0, restored.stderr
    assert tree(target) == tree(original)
