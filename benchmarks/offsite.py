"""Benchmark: off-site transfer (ours vs one put_object / get_object) and encryption cost.

    .venv/bin/python benchmarks/offsite.py [--size-mb 500] [--repeat 3] [--files 50000] [--only ...]

Four parts, every contender in its own child process (peak RSS is its own):

1. Transfer of a SIZE MB archive (random bytes: a compressed archive does not compress further)
   to a local S3 endpoint (a moto server started here): our upload step (`upload_backup`:
   checksum pass, multipart with per-part SHA-256, HEAD check, manifest) against one
   `put_object`; our download (`download_archive`: one streamed GET, SHA-256 on the fly, checked
   against the manifest) against a plain streamed `get_object`. Part size and concurrency: our
   defaults (64 MiB, 4).
2. Encryption throughput over the same file: plain copy vs our age writer and reader, and pyrage
   (`encrypt_io`, Rust) for reference.
3. Cost of encryption in a real JSON backup (benchmarks/json_backup.py's tree of FILES files):
   create and verify with and without LIFEOS_ENCRYPTION_RECIPIENTS, wall and CPU seconds (CPU is
   steadier on a shared machine). Target: at most +15 %.
4. Several targets (`--only targets`, not in the default set): our upload step (`upload_backup`,
   one thread per target) of the same SIZE MB archive to each provider's emulator alone (S3 on a
   moto server, GCS on gcp-storage-emulator, Azure on Azurite, as in tests/support/emulators.py),
   to two targets at once (S3 + Azure) and to all three. Target: three targets take at most the
   slowest single upload longer than S3 alone (they run side by side); PASS or FAIL is printed.
   Emulators and client share the machine's cores: on two cores the side-by-side uploads compete
   for CPU with each other and with the emulators.

5. A backup's chain (`--only chain`, not in the default set): a JSON backup of an app folder of
   SIZE MB (JSON files of base64 noise) through Redis and the two workers `lifeos-backup up`
   starts, from the request to the rotate step's result, with each target alone and with all
   three. Target: three targets lengthen the chain by at most the slowest single upload step
   (the upload task's seconds, from the worker's log); PASS or FAIL is printed.

`--only transfer,encryption,backup,targets,chain` runs a subset.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (  # the folder is not a package; sys.path is set above
    clean_env,
    facts_block,
    git_revision,
    load_average,
    machine_facts,
    markdown_table,
    median,
    run_callable,
)

MB = 1_000_000
MIB = 1 << 20
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret"}
REGION = "us-east-1"


# --- set-up ---------------------------------------------------------------------------------------


def write_random(path: Path, size: int) -> str:
    """SIZE random bytes; returns their SHA-256 (hex)."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            block = os.urandom(min(16 * MIB, left))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return digest.hexdigest()


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def child_env(endpoint: str, bucket: str) -> dict[str, str]:
    return clean_env(
        drop_prefixes=("LIFEOS_", "AWS_"),
        LIFEOS_S3_ENDPOINT_URL=endpoint,
        LIFEOS_S3_BUCKET=bucket,
        AWS_DEFAULT_REGION=REGION,
        **CREDENTIALS,
    )


# --- transfer contenders (each runs in a fresh interpreter) --------------------------------------


def _repository(work: str, archive: str, sha256: str) -> tuple[Any, Any, str]:
    """A backup repository holding `archive` as a verified JSON backup (catalog + manifest)."""
    import secrets
    from datetime import UTC, datetime, timedelta

    from lifeos_backup.core.names import new_backup_id
    from lifeos_backup.core.settings import Settings
    from lifeos_backup.formats.manifest import ArchiveInfo, Compression, Manifest, write_manifest
    from lifeos_backup.storage.catalog import Backup
    from lifeos_backup.storage.catalog.store import Catalog

    settings = Settings(backup_root=Path(work) / "backups")
    catalog = Catalog(settings.effective_catalog_url)
    # ids are a kind's prefix and a UTC second: a random second of the past year keeps every
    # run's id (and remote key) its own
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=secrets.randbelow(3 << 24))
    backup_id = new_backup_id("json", now)
    folder = settings.backup_root / "json"
    folder.mkdir(parents=True, exist_ok=True)
    local = folder / f"{backup_id}.tar.zst"
    os.link(archive, local)
    size = local.stat().st_size
    manifest = Manifest(
        backup_id=backup_id,
        kind="json",
        created_at=now,
        finished_at=now,
        host="bench",
        tool_version="bench",
        compression=Compression(algorithm="zstd", level=7),
        archive=ArchiveInfo(name=local.name, size=size, sha256=sha256),
        verified_at=now,
    )
    write_manifest(folder / f"{backup_id}.manifest.json", manifest)
    catalog.add_backup(
        Backup(
            id=backup_id,
            kind="json",
            status="verified",
            path=f"json/{local.name}",
            size=size,
            sha256=sha256,
            created_at=now,
            reason="",
            initiator="bench",
            host="bench",
        )
    )
    return settings, catalog, backup_id


def ours_upload(work: str, archive: str, sha256: str) -> dict[str, Any]:
    from lifeos_backup.storage.offsite.upload import upload_backup

    settings, catalog, backup_id = _repository(work, archive, sha256)
    started = time.perf_counter()
    done = upload_backup(backup_id, settings, catalog)
    seconds = time.perf_counter() - started
    assert done is not None and not done.adopted
    return {"seconds": seconds, "key": done.key, "parts": done.checksum.rsplit("-", 1)[-1]}


def single_put(endpoint: str, bucket: str, archive: str) -> dict[str, Any]:
    started = time.perf_counter()  # client creation timed too, as ours creates its own
    client = s3_client(endpoint)
    key = f"single/{uuid.uuid4().hex}"
    with open(archive, "rb") as body:
        client.put_object(Bucket=bucket, Key=key, Body=body)
    return {"seconds": time.perf_counter() - started, "key": key}


def ours_download(
    endpoint: str, bucket: str, key: str, archive: str, sha256: str
) -> dict[str, Any]:
    from datetime import UTC, datetime

    from lifeos_backup.core.settings import Settings
    from lifeos_backup.formats.manifest import ArchiveInfo, Compression, Manifest
    from lifeos_backup.storage.offsite.download import download_archive
    from lifeos_backup.storage.offsite.s3 import connect

    settings = Settings()
    now = datetime.now(UTC)
    manifest = Manifest(
        backup_id="json_backup_20260101_000000",  # any valid id: only the archive is read
        kind="json",
        created_at=now,
        finished_at=now,
        host="bench",
        tool_version="bench",
        compression=Compression(algorithm="zstd", level=7),
        archive=ArchiveInfo(
            name="json_backup_20260101_000000.tar.zst", size=os.path.getsize(archive), sha256=sha256
        ),
    )
    dest = Path(archive).with_name(f"down-{uuid.uuid4().hex}")
    started = time.perf_counter()
    download_archive(connect(settings), key, dest, manifest, settings)  # includes SHA-256 check
    seconds = time.perf_counter() - started
    dest.unlink()
    return {"seconds": seconds}


def single_get(endpoint: str, bucket: str, key: str, archive: str) -> dict[str, Any]:
    started = time.perf_counter()  # client creation timed too, as ours creates its own
    client = s3_client(endpoint)
    dest = Path(archive).with_name(f"get-{uuid.uuid4().hex}")
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    with open(dest, "wb") as out:
        for chunk in body.iter_chunks(MIB):
            out.write(chunk)
    seconds = time.perf_counter() - started
    dest.unlink()
    return {"seconds": seconds}


# --- encryption contenders ------------------------------------------------------------------------


def plain_copy(archive: str) -> dict[str, Any]:
    dest = archive + ".copy"
    started = time.perf_counter()
    with open(archive, "rb") as src, open(dest, "wb") as out:
        while block := src.read(MIB):
            out.write(block)
    seconds = time.perf_counter() - started
    os.unlink(dest)
    return {"seconds": seconds}


def ours_encrypt(archive: str, recipient: str) -> dict[str, Any]:
    from lifeos_backup.formats.crypto import SealingWriter, parse_recipients

    dest = archive + ".age"
    started = time.perf_counter()
    with open(archive, "rb") as src, open(dest, "wb") as out:
        writer = SealingWriter(out, parse_recipients(recipient))
        while block := src.read(MIB):
            writer.write(block)
        writer.close()
    return {"seconds": time.perf_counter() - started}


def ours_decrypt(archive: str, identity_file: str) -> dict[str, Any]:
    from lifeos_backup.formats.crypto import OpeningReader, load_identities

    identities = load_identities(Path(identity_file))
    dest = archive + ".plain"
    started = time.perf_counter()
    with open(archive + ".age", "rb") as src, open(dest, "wb") as out:
        reader = OpeningReader(src, identities)
        while block := reader.read(MIB):
            out.write(block)
    seconds = time.perf_counter() - started
    os.unlink(dest)
    return {"seconds": seconds}


def pyrage_encrypt(archive: str, recipient: str) -> dict[str, Any]:
    import pyrage

    dest = archive + ".pyrage"
    started = time.perf_counter()
    with open(archive, "rb") as src, open(dest, "wb") as out:
        pyrage.encrypt_io(src, out, [pyrage.x25519.Recipient.from_str(recipient)])
    seconds = time.perf_counter() - started
    os.unlink(dest)
    return {"seconds": seconds}


# --- encryption inside a JSON backup --------------------------------------------------------------


def json_backup(app_dir: str, work: str, recipient: str) -> dict[str, Any]:
    import resource

    from lifeos_backup.core.settings import Settings
    from lifeos_backup.jobs.backups import create_backup, locate, verify_backup
    from lifeos_backup.storage.catalog.store import Catalog

    def cpu() -> float:  # user + system of every thread of this process (zstd workers too)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    settings = Settings(
        backup_root=Path(work) / f"backups-{uuid.uuid4().hex[:6]}",
        app_dir=Path(app_dir),
        encryption_recipients=recipient or None,
    )
    catalog = Catalog(settings.effective_catalog_url)
    c0, t0 = cpu(), time.perf_counter()
    manifest = create_backup("json", settings, catalog, reason="benchmark")
    c1, t1 = cpu(), time.perf_counter()
    verified = verify_backup(manifest.backup_id, settings, catalog)
    t2 = time.perf_counter()
    _row, archive, _mpath = locate(settings, catalog, manifest.backup_id)
    size = archive.stat().st_size
    shutil.rmtree(settings.backup_root)
    return {
        "create_s": t1 - t0,
        "create_cpu_s": c1 - c0,
        "verify_s": t2 - t1,
        "scope": verified.verified_scope,
        "archive_bytes": size,
    }


# --- the run --------------------------------------------------------------------------------------


def _mbps(size: int, seconds: float) -> str:
    return f"{size / MB / seconds:.0f}"


def transfer(work: Path, archive: Path, sha256: str, repeat: int) -> list[list[str]]:
    from tests.support.s3 import MotoServer

    moto = MotoServer()
    try:
        client = s3_client(moto.url)
        bucket = f"bench-{uuid.uuid4().hex[:10]}"
        client.create_bucket(Bucket=bucket)
        env = child_env(moto.url, bucket)
        size = archive.stat().st_size
        runs: dict[str, list[Any]] = {k: [] for k in ("up", "put", "down", "get")}
        for _ in range(repeat):
            up = run_callable(ours_upload, str(work), str(archive), sha256, env=env)
            put = run_callable(single_put, moto.url, bucket, str(archive), env=env)
            key = up.result["key"]
            down = run_callable(ours_download, moto.url, bucket, key, str(archive), sha256, env=env)
            get = run_callable(single_get, moto.url, bucket, key, str(archive), env=env)
            for name, measured in (("up", up), ("put", put), ("down", down), ("get", get)):
                runs[name].append(measured)
            for stale in (key, put.result["key"]):
                client.delete_object(Bucket=bucket, Key=stale)
            client.delete_object(Bucket=bucket, Key=key.replace(".tar.zst", ".manifest.json"))
        rows = []
        labels = {
            "up": "upload: ours (checksum pass + 64 MiB parts x4 + HEAD check + manifest)",
            "put": "upload: one put_object",
            "down": "download: ours (one streamed GET, SHA-256 on the fly, checked)",
            "get": "download: one get_object, streamed",
        }
        for name, measured in runs.items():
            seconds = median([m.result["seconds"] for m in measured])
            rss = max(m.peak_rss_mb for m in measured)
            rows.append([labels[name], f"{seconds:.2f}", _mbps(size, seconds), f"{rss:.0f}"])
        return rows
    finally:
        moto.stop()


@contextlib.contextmanager
def emulated_targets(tag: str) -> Iterator[dict[str, Any]]:
    """moto, gcp-storage-emulator and Azurite as in the tests, a bucket or container on each."""
    from tests.support.emulators import Azurite, GcsEmulator, azure_container, gcs_bucket, s3_bucket
    from tests.support.s3 import MotoServer

    servers: list[Any] = []
    try:
        for start in (MotoServer, GcsEmulator, Azurite):
            servers.append(start())
        moto, gcs, azurite = servers
        yield {
            "s3": s3_bucket(moto, f"s3-{tag}"),
            "gcs": gcs_bucket(gcs, f"gcs-{tag}"),
            "azure": azure_container(azurite, f"azure-{tag}"),
        }
    finally:
        for server in reversed(servers):
            server.stop()


def several_targets(
    work: Path, archive: Path, sha256: str, repeat: int
) -> tuple[list[list[str]], bool, str]:
    """Upload to each emulator alone, to two and to three at once; rows, pass, verdict line."""
    with emulated_targets("bench") as buckets:
        setups = {
            "S3 (moto server)": ["s3"],
            "GCS (gcp-storage-emulator)": ["gcs"],
            "Azure (Azurite)": ["azure"],
            "two at once: S3 + Azure": ["s3", "azure"],
            "three at once: S3 + GCS + Azure": ["s3", "gcs", "azure"],
        }
        size = archive.stat().st_size
        runs: dict[str, list[Any]] = {k: [] for k in setups}
        for _ in range(repeat):
            for label, names in setups.items():
                chosen = [buckets[n] for n in names]
                secrets = {k: v for b in chosen for k, v in b.env.items()}
                env = clean_env(
                    drop_prefixes=("LIFEOS_", "AWS_", "GOOGLE_", "AZURE_"),
                    LIFEOS_OFFSITE_TARGETS=json.dumps([b.target for b in chosen]),
                    **secrets,
                )
                runs[label].append(
                    run_callable(ours_upload, str(work), str(archive), sha256, env=env)
                )
                for bucket in chosen:  # the emulators keep objects in memory
                    for name in bucket.names():
                        bucket.delete(name)
        seconds = {k: median([m.result["seconds"] for m in v]) for k, v in runs.items()}
        rows = []
        for label, names in setups.items():
            rss = max(m.peak_rss_mb for m in runs[label])
            cpu = median([m.cpu_seconds for m in runs[label]])
            total = size * len(names)
            rows.append(
                [
                    label,
                    f"{seconds[label]:.2f}",
                    _mbps(total, seconds[label]),
                    f"{cpu:.2f}",
                    f"{rss:.0f}",
                ]
            )
        single = [seconds[k] for k, v in setups.items() if len(v) == 1]
        one, three = seconds["S3 (moto server)"], seconds["three at once: S3 + GCS + Azure"]
        passed = three - one <= max(single)
        verdict = (
            f"three targets vs S3 alone: +{three - one:.2f} s, slowest single upload "
            f"{max(single):.2f} s (the three one after another: {sum(single):.2f} s): "
            f"{'PASS' if passed else 'FAIL'}"
        )
        return rows, passed, verdict


def blob_tree(root: Path, size: int) -> None:
    """An app folder of about SIZE bytes in 2 MB JSON files of base64 noise (compresses little,
    so the archive is about three quarters of SIZE)."""
    import base64

    folder = root / "data" / "blobs"
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(max(1, size // (2 * MB))):
        text = base64.b64encode(os.urandom(3 * MB // 2)).decode()
        (folder / f"blob_{number:04d}.json").write_text(json.dumps({"n": number, "b": text}))


def chain_wall_time(work: Path, size_mb: int, repeat: int) -> tuple[list[list[str]], bool, str]:
    """A JSON backup's whole chain (create, verify, upload, rotate) through Redis and the two
    workers `up` starts, to each target alone and to all three: seconds from the request to the
    rotate step's result, and the upload step's own seconds from the worker's log. Workers restart
    between set-ups (their settings differ); the order rotates each round."""
    import re

    from lifeos_backup.app.client import make_app, request_backup
    from tests.support.services import RedisServer
    from tests.support.worker import WorkerProcess

    uploaded = re.compile(r"Task lifeos\.backup\.upload\[\S+\] succeeded in ([0-9.]+)s")
    app_dir = work / "app"
    blob_tree(app_dir, size_mb * MB)
    with contextlib.ExitStack() as stack, emulated_targets("chain") as buckets:
        redis = RedisServer()
        stack.callback(redis.stop)
        setups = {
            "S3 alone": ["s3"],
            "GCS alone": ["gcs"],
            "Azure alone": ["azure"],
            "S3 + GCS + Azure": list(buckets),
        }
        chain: dict[str, list[float]] = {k: [] for k in setups}
        uploads: dict[str, list[float]] = {k: [] for k in setups}  # the upload task's seconds
        archive_mb = 0.0
        for rnd in range(repeat):
            order = list(setups.items())
            for number, (label, names) in enumerate(order[rnd:] + order[:rnd]):
                chosen = [buckets[n] for n in names]
                env = clean_env(
                    drop_prefixes=("LIFEOS_", "AWS_", "GOOGLE_", "AZURE_"),
                    LIFEOS_BACKUP_ROOT=str(work / f"repo-{rnd}-{number}"),
                    LIFEOS_APP_DIR=str(app_dir),
                    LIFEOS_REDIS_URL=redis.url(number),
                    LIFEOS_OFFSITE_TARGETS=json.dumps([b.target for b in chosen]),
                    **{k: v for b in chosen for k, v in b.env.items()},
                )
                logs = [work / f"dumps-{rnd}-{number}.log", work / f"other-{rnd}-{number}.log"]
                workers = [  # either may run the upload: both consume the host's queue
                    WorkerProcess(env, logs[0], 1, "dumps", f"d{rnd}{number}@%h"),
                    WorkerProcess(
                        env, logs[1], 2, "uploads,drills,maintenance", f"w{rnd}{number}@%h"
                    ),
                ]
                try:
                    for worker in workers:
                        worker.wait_ready(60)
                    app = make_app(env["LIFEOS_REDIS_URL"])
                    started = time.perf_counter()
                    ref = request_backup("json", "benchmark", app=app, initiator="bench")
                    app.AsyncResult(ref.rotate_task_id).get(timeout=600)
                    chain[label].append(time.perf_counter() - started)
                finally:
                    for worker in workers:
                        worker.stop()
                seconds = [float(m) for log in logs for m in uploaded.findall(log.read_text())]
                assert len(seconds) == 1, f"{label}: upload steps {seconds}"
                uploads[label].append(seconds[0])
                for bucket in chosen:  # one archive on each; the emulators keep it in memory
                    found = [n for n in bucket.names() if n.endswith(".tar.zst")]
                    assert len(found) == 1, f"{bucket.target['name']}: {found}"
                    archive_mb = len(bucket.get(found[0])) / MB
                    for name in bucket.names():
                        bucket.delete(name)
                shutil.rmtree(env["LIFEOS_BACKUP_ROOT"])
        med = {k: median(v) for k, v in chain.items()}
        rows = [
            [k, f"{med[k]:.2f}", f"{min(v):.2f}", f"{max(v):.2f}", f"{median(uploads[k]):.2f}"]
            for k, v in chain.items()
        ]
        slowest = max(median(uploads[k]) for k, v in setups.items() if len(v) == 1)
        added = med["S3 + GCS + Azure"] - med["S3 alone"]
        passed = added <= slowest
        verdict = (
            f"archive {archive_mb:.0f} MB; three targets vs S3 alone: {added:+.2f} s, slowest "
            f"single upload step {slowest:.2f} s: {'PASS' if passed else 'FAIL'}"
        )
        return rows, passed, verdict


def encryption(work: Path, archive: Path, repeat: int) -> list[list[str]]:
    from lifeos_backup.formats.crypto import generate_identity

    identity, recipient = generate_identity()
    key_file = work / "bench.key"
    key_file.write_text(identity + "\n")
    size = archive.stat().st_size
    contenders = {
        "plain copy (read + write)": (plain_copy, (str(archive),)),
        "encrypt: ours (age, cryptography)": (ours_encrypt, (str(archive), recipient)),
        "decrypt: ours": (ours_decrypt, (str(archive), str(key_file))),
        "encrypt: pyrage.encrypt_io (Rust)": (pyrage_encrypt, (str(archive), recipient)),
    }
    runs: dict[str, list[Any]] = {k: [] for k in contenders}
    for _ in range(repeat):
        for name, (func, args) in contenders.items():
            runs[name].append(run_callable(func, *args))
    os.unlink(str(archive) + ".age")
    rows = []
    for name, measured in runs.items():
        seconds = median([m.result["seconds"] for m in measured])
        rss = max(m.peak_rss_mb for m in measured)
        rows.append([name, f"{seconds:.2f}", _mbps(size, seconds), f"{rss:.0f}"])
    return rows


def backup_cost(work: Path, files: int, repeat: int) -> tuple[list[list[str]], dict[str, float]]:
    from json_backup import prepare_tree, warm_and_count

    from lifeos_backup.formats.crypto import generate_identity

    tree = work / "tree"
    prepare_tree(tree, files, 20240601)
    warm_and_count(tree)
    _identity, recipient = generate_identity()
    env = clean_env(drop_prefixes=("LIFEOS_",))
    runs: dict[str, list[Any]] = {"plain": [], "encrypted": []}
    for _ in range(repeat):
        for name, rec in (("plain", ""), ("encrypted", recipient)):
            runs[name].append(run_callable(json_backup, str(tree), str(work), rec, env=env))
    rows = []
    med: dict[str, dict[str, float]] = {}
    for name, measured in runs.items():
        med[name] = {
            key: median([m.result[key] for m in measured])
            for key in ("create_s", "create_cpu_s", "verify_s")
        }
        rows.append(
            [
                name,
                f"{med[name]['create_s']:.2f}",
                f"{med[name]['create_cpu_s']:.2f}",
                f"{med[name]['verify_s']:.2f}",
                measured[0].result["scope"],
                f"{measured[0].result['archive_bytes'] / MB:.1f}",
            ]
        )
    plain, sealed = med["plain"], med["encrypted"]
    costs = {
        "create wall": sealed["create_s"] / plain["create_s"] - 1,
        "create CPU": sealed["create_cpu_s"] / plain["create_cpu_s"] - 1,
        "create+verify wall": (sealed["create_s"] + sealed["verify_s"])
        / (plain["create_s"] + plain["verify_s"])
        - 1,
    }
    return rows, costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--only", default="transfer,encryption,backup")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    status = 0
    with tempfile.TemporaryDirectory(prefix="lifeos-bench-offsite-") as tmp:
        work = Path(tmp)
        code = git_revision(Path(__file__).resolve().parent.parent, ["lifeos_backup", "benchmarks"])
        print(facts_block(machine_facts({"code": code, "load average (start)": load_average()})))
        headers = ["contender", "seconds", "MB/s", "peak RSS MB"]
        if parts & {"transfer", "encryption", "targets"}:
            archive = work / "archive.bin"
            sha256 = write_random(archive, args.size_mb * MB)
            if "transfer" in parts:
                print(f"\n### Transfer of a {args.size_mb} MB archive to a local moto server\n")
                rows = transfer(work, archive, sha256, args.repeat)
                print(markdown_table(headers, rows), flush=True)
            if "encryption" in parts:
                print(f"\n### Encryption of the same {args.size_mb} MB\n")
                print(markdown_table(headers, encryption(work, archive, args.repeat)), flush=True)
            if "targets" in parts:
                print(f"\n### Upload step of a {args.size_mb} MB archive, one to three targets\n")
                rows, passed, verdict = several_targets(work, archive, sha256, args.repeat)
                columns = ["targets", "seconds", "MB/s", "client CPU s", "peak RSS MB"]
                print(markdown_table(columns, rows))
                print("(MB/s: bytes sent to all targets together over the wall time; client CPU:")
                print(" our upload process, not the emulators)")
                print(verdict, flush=True)
                status = status or (0 if passed else 1)
            archive.unlink()
        if "chain" in parts:
            print(f"\n### A JSON backup's chain ({args.size_mb} MB app folder), 1 vs 3 targets\n")
            rows, passed, verdict = chain_wall_time(work, args.size_mb, args.repeat)
            columns = ["targets", "chain s (median)", "min", "max", "upload step s (median)"]
            print(markdown_table(columns, rows))
            print("(request to the rotate step's result, through Redis and two workers)")
            print(verdict, flush=True)
            status = status or (0 if passed else 1)
        if "backup" in parts:
            print(f"\n### Encryption inside a JSON backup ({args.files:,} files)\n")
            rows, costs = backup_cost(work, args.files, args.repeat)
            headers = [
                "json backup",
                "create s",
                "create CPU s",
                "verify s",
                "verify scope",
                "archive MB",
            ]
            print(markdown_table(headers, rows))
            print("\nencryption cost: " + ", ".join(f"{k} {v:+.1%}" for k, v in costs.items()))
            print("(target: at most +15%)")
            status = status or (0 if costs["create CPU"] <= 0.15 else 1)
        print(f"load average (end): {load_average()}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
