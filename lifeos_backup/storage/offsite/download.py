"""Reading off-site copies back: fetch one backup for a restore, and rebuild the catalog.

Both work on a machine that has nothing but the bucket's settings and credentials (and, for
encrypted backups, the private key): the manifests in the bucket describe everything. A remote
manifest is streamed into a file of a private scratch folder and read there like a local one
(`read_manifest`: the first line parsed, the entries streamed by `iter_files`), so memory does not
grow with a backup's file count.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import BotoCoreError

from lifeos_backup.core.errors import NotFound, VerificationFailed
from lifeos_backup.core.fsutil import private_dir, remove_quietly
from lifeos_backup.core.progress import Progress, ProgressFn, ignore
from lifeos_backup.core.settings import Settings
from lifeos_backup.formats.manifest import MANIFEST_SUFFIX, Manifest, read_manifest
from lifeos_backup.formats.streams import CHUNK
from lifeos_backup.storage.catalog import Backup, Catalog
from lifeos_backup.storage.catalog.store import CREATED, VERIFIED
from lifeos_backup.storage.offsite import state
from lifeos_backup.storage.offsite.s3 import Remote, connect, head, manifest_key, s3_errors
from lifeos_backup.storage.offsite.upload import remote_mismatch
from lifeos_backup.storage.repository import LAYOUTS

log = logging.getLogger(__name__)


def read_remote_manifest(remote: Remote, key: str, scratch: Path) -> Manifest:
    """The manifest at `key`, streamed into a file in `scratch` and read from there: its entries
    stream from that file (`iter_files`) as long as it is there."""
    name = key.rsplit("/", 1)[-1]
    if not name.endswith(MANIFEST_SUFFIX) or name.startswith("."):
        name = "remote" + MANIFEST_SUFFIX
    path = scratch / name
    body = remote.client.get_object(Bucket=remote.bucket, Key=key)["Body"]
    with open(path, "wb") as out:
        for chunk in body.iter_chunks(CHUNK):
            out.write(chunk)
    return read_manifest(path)


def download_archive(
    remote: Remote,
    key: str,
    dest: Path,
    manifest: Manifest,
    settings: Settings,
    progress: ProgressFn = ignore,
) -> None:
    """Stream the object to `dest`, hashing as it arrives; keep it only if it matches the manifest.

    One sequential GET with the SHA-256 taken in the same pass (no second read of the file). A
    connection that breaks mid-stream is resumed with a Range request from the byte reached, up
    to LIFEOS_S3_MAX_ATTEMPTS times: the hash simply continues. docs/decisions.md explains why
    not boto3's parallel ranged download.
    """
    report = Progress("downloading", bytes_total=manifest.archive.size)
    digest = hashlib.sha256()
    tmp = dest.with_name(f".{dest.name}.download")
    failures = 0
    try:
        with open(tmp, "wb") as out:
            while True:
                extra = {"Range": f"bytes={report.bytes_done}-"} if report.bytes_done else {}
                try:
                    reply = remote.client.get_object(Bucket=remote.bucket, Key=key, **extra)
                    for chunk in reply["Body"].iter_chunks(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        report.bytes_done += len(chunk)
                        progress(report)
                    break
                except (BotoCoreError, OSError) as exc:  # the stream broke: continue from here
                    failures += 1
                    if failures >= settings.s3_max_attempts:
                        raise
                    log.warning("download of %s broke at %d bytes: %s", key, report.bytes_done, exc)
                    time.sleep(min(0.5 * 2.0**failures, 20.0))
        size = report.bytes_done
        if size != manifest.archive.size or digest.hexdigest() != manifest.archive.sha256:
            raise VerificationFailed(
                f"off-site copy of {manifest.backup_id} does not match its manifest",
                f"{size} bytes (manifest {manifest.archive.size}), SHA-256 "
                f"{'differs' if digest.hexdigest() != manifest.archive.sha256 else 'equal'}",
                "the remote copy is damaged; use another backup",
            )
        tmp.replace(dest)
    finally:
        remove_quietly(tmp)


@contextlib.contextmanager
def fetched(
    backup_id: str, settings: Settings, catalog: Catalog, progress: ProgressFn = ignore
) -> Iterator[tuple[Path, Manifest]]:
    """Download a backup's archive and manifest into a private scratch folder; removed after.
    The manifest's entries stream from its file there while the block runs."""
    row = catalog.get(backup_id)
    if not row.offsite_key or row.offsite_status not in (state.UPLOADED, state.DAMAGED):
        raise NotFound(
            f"backup {backup_id} has no off-site copy",
            f"off-site status: {row.offsite_status or 'never uploaded'}",
            "restore it from the local copy, or choose one that `list` shows as offsite/both",
        )
    remote = connect(settings)
    scratch = Path(tempfile.mkdtemp(prefix="offsite-", dir=private_dir(settings.state_dir)))
    try:
        with s3_errors(f"download of {backup_id}", remote):
            manifest = read_remote_manifest(
                remote, manifest_key(row.offsite_key, backup_id), scratch
            )
            if manifest.backup_id != backup_id:
                raise VerificationFailed(
                    f"remote manifest of {backup_id} describes {manifest.backup_id}"
                )
            archive = scratch / manifest.archive.name
            download_archive(remote, row.offsite_key, archive, manifest, settings, progress)
        yield archive, manifest
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- Catalog rebuild from the bucket --------------------------------------------------------------


@dataclass
class RemoteBackup:
    manifest: Manifest
    archive_key: str
    status: str  # state.UPLOADED / MISSING / DAMAGED
    checksum: str | None
    problem: str


def _is_manifest_key(remote: Remote, key: str) -> bool:
    rel = remote.relpath(key)
    folder, _, name = rel.rpartition("/")
    return name.endswith(MANIFEST_SUFFIX) and any(
        folder == lay.folder and name.startswith(lay.prefix) for lay in LAYOUTS.values()
    )


def remote_manifest_keys(remote: Remote) -> list[str]:
    pages = remote.client.get_paginator("list_objects_v2").paginate(
        Bucket=remote.bucket, Prefix=remote.root
    )
    keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    return sorted(k for k in keys if _is_manifest_key(remote, k))


def _valid_remote_manifest(remote: Remote, key: str, scratch: Path) -> Manifest:
    """The manifest at `key`, valid (lifeos_backup.core.names, via Manifest) and describing the
    backup its key is named after; VerificationFailed otherwise. Only its first line is parsed
    (the catalog needs no entries) and its file in `scratch` is removed at once: the entries are
    not kept."""
    try:
        manifest = read_remote_manifest(remote, key, scratch)
    finally:
        for path in scratch.iterdir():
            remove_quietly(path)
    named = key.rsplit("/", 1)[-1].removesuffix(MANIFEST_SUFFIX)
    if manifest.backup_id != named:
        raise VerificationFailed(
            f"manifest {key} describes {manifest.backup_id}",
            "not the backup its key is named after",
        )
    return manifest


def scan_remote(
    remote: Remote, scratch: Path, warn: Callable[[str], None] = log.warning
) -> list[RemoteBackup]:
    """Every backup in the bucket with a valid manifest, and whether its archive is intact; an
    invalid manifest is reported through `warn` and skipped. Each manifest passes through a file
    in the private folder `scratch`, one at a time."""
    found: list[RemoteBackup] = []
    for key in remote_manifest_keys(remote):
        try:
            manifest = _valid_remote_manifest(remote, key, scratch)
        except VerificationFailed as exc:
            warn(f"skipped remote manifest {key}: {exc}")
            continue
        archive_key = key.rsplit("/", 1)[0] + "/" + manifest.archive.name
        reply = head(remote, archive_key)
        problem = remote_mismatch(reply, manifest.archive.size, manifest.archive.sha256, None)
        status = (
            state.UPLOADED if not problem else state.MISSING if reply is None else state.DAMAGED
        )
        checksum = reply.get("ChecksumSHA256") if reply else None
        found.append(RemoteBackup(manifest, archive_key, status, checksum, problem))
    return found


def rebuild_from_offsite(
    settings: Settings, catalog: Catalog, warn: Callable[[str], None] = log.warning
) -> list[str]:
    """Add every remote backup to the catalog (or its off-site fields to a known one); invalid
    remote manifests are reported through `warn` and skipped.

    Rows known only from the bucket get the manifest's status (verified: only verified backups
    are uploaded) and `list` shows them as `offsite`. Checksums are taken from the bucket as found
    (trust on first sight); the sync's full re-reads compare the content with the manifests.
    """
    remote = connect(settings)
    with (
        tempfile.TemporaryDirectory(prefix="offsite-", dir=private_dir(settings.state_dir)) as tmp,
        s3_errors("catalog rebuild from off-site", remote),
    ):
        remote_backups = scan_remote(remote, Path(tmp), warn)
    for item in remote_backups:
        m = item.manifest
        offsite = {
            "offsite_status": item.status,
            "offsite_key": item.archive_key,
            "offsite_checksum": item.checksum,
            "offsite_error": item.problem or None,
        }
        if catalog.exists(m.backup_id):
            catalog.update(m.backup_id, **offsite)
            continue
        catalog.add_backup(
            Backup(
                id=m.backup_id,
                kind=m.kind,
                status=VERIFIED if m.verified_at else CREATED,
                path=remote.relpath(item.archive_key),
                size=m.archive.size,
                sha256=m.archive.sha256,
                reason=m.reason,
                initiator=m.initiator,
                host=m.host,
                created_at=m.created_at,
                finished_at=m.finished_at,
                verified_at=m.verified_at,
                duration_s=(m.finished_at - m.created_at).total_seconds(),
                **offsite,
            )
        )
    for item in remote_backups:
        if item.problem:
            log.error("off-site copy of %s: %s", item.manifest.backup_id, item.problem)
    return [item.manifest.backup_id for item in remote_backups]
