"""Upload one verified backup: archive first (multipart, resumable), then its manifest, last.

Integrity, end to end:
1. one sequential read of the local archive computes its SHA-256 (must equal the manifest's: the
   file did not change since `verify`) and the SHA-256 of every part;
2. every part is sent with that SHA-256 (S3 additional checksums), so the service rejects a part
   whose bytes differ from what we hashed;
3. afterwards HEAD must report the manifest's size, our SHA-256 in the object metadata and the
   checksum S3 computed (the SHA-256 of a single-part object, or the composite over the parts);
4. only then the manifest goes up, sealed to the encryption recipients when encryption is on. A
   remote archive without a manifest is never listed as good.

Resumption: the multipart upload id and every finished part are recorded in the catalog as they
complete. A crashed or failed upload is continued from the parts S3 still holds with the same
ETag and checksum; an upload that cannot be resumed is aborted, never left as orphan parts.

We drive the multipart upload with boto3's low-level calls (not `upload_file`) because the managed
transfer hides the upload id and aborts on error, so it can neither be resumed after a crash nor
recorded; part size and concurrency are the same knobs its TransferConfig has.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from lifeos_backup.core.agekeys import parse_recipients
from lifeos_backup.core.errors import (
    LifeosError,
    OffsiteError,
    PermanentError,
    VerificationFailed,
)
from lifeos_backup.core.fsutil import private_dir
from lifeos_backup.core.progress import Progress, ProgressFn, ignore
from lifeos_backup.core.settings import Settings
from lifeos_backup.core.targets import Target
from lifeos_backup.formats.crypto import seal_file
from lifeos_backup.formats.manifest import Manifest, manifest_path, read_manifest
from lifeos_backup.formats.streams import CHUNK, sha256_file
from lifeos_backup.storage.catalog import Backup, Catalog
from lifeos_backup.storage.catalog.store import FAILED as LOCAL_FAILED
from lifeos_backup.storage.catalog.store import VERIFIED, utcnow
from lifeos_backup.storage.offsite import state
from lifeos_backup.storage.offsite.store import (
    ObjectInfo,
    ObjectOptions,
    ObjectStore,
    find_manifest,
    manifest_key,
    same_checksum,
)
from lifeos_backup.storage.offsite.targets import bandwidth, configured, connect, named

log = logging.getLogger(__name__)
MIB = 1 << 20
MAX_PARTS = 10_000  # S3's limit


# --- Bandwidth limit ------------------------------------------------------------------------------


class Throttle:
    """A shared byte budget: all upload threads together send at most `rate` bytes per second."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._lock = threading.Lock()
        self._free_at = time.monotonic()

    def consume(self, size: int) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._free_at)
            self._free_at = start + size / self.rate
        if start > now:
            time.sleep(start - now)


def throttle_for(settings: Settings, target: Target | None = None) -> Throttle | None:
    """One budget per target (its own limit, else LIFEOS_S3_BANDWIDTH_LIMIT): targets sending
    side by side do not share one."""
    limit = bandwidth(target, settings) if target is not None else settings.s3_bandwidth_limit
    return Throttle(limit * 1_000_000) if limit else None


class RangeReader:
    """A seekable, read-only view of `size` bytes of a file from `offset`, read from disk as sent.

    Positions are relative to the range, so botocore's rewind for a retry (seek(0)) works.
    """

    def __init__(self, fd: int, offset: int, size: int, throttle: Throttle | None) -> None:
        self._fd, self._offset, self._size = fd, offset, size
        self._pos = 0
        self._throttle = throttle

    def read(self, size: int = -1) -> bytes:
        left = self._size - self._pos
        size = left if size is None or size < 0 else min(size, left)
        if size <= 0:
            return b""
        if self._throttle is not None:
            self._throttle.consume(size)
        data = os.pread(self._fd, size, self._offset + self._pos)
        self._pos += len(data)
        return data

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = min(max(base + pos, 0), self._size)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True


# --- Plan: what the parts are and their checksums -------------------------------------------------


@dataclass(frozen=True)
class Part:
    number: int
    offset: int
    size: int
    checksum: str  # base64 SHA-256 of the part's bytes


@dataclass(frozen=True)
class UploadPlan:
    size: int
    sha256: str  # hex SHA-256 of the whole file
    parts: list[Part]

    @property
    def single(self) -> bool:
        return len(self.parts) <= 1

    @property
    def expected_checksum(self) -> str:
        """What S3 reports as ChecksumSHA256 once the object is complete."""
        if self.single:
            return _b64(bytes.fromhex(self.sha256))
        digests = b"".join(base64.b64decode(p.checksum) for p in self.parts)
        return f"{_b64(hashlib.sha256(digests).digest())}-{len(self.parts)}"


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def part_size_for(size: int, configured_mib: int, max_parts: int = MAX_PARTS) -> int:
    """The configured part size, grown (in whole MiB) if the file would need more parts than the
    store takes (S3 10,000; GCS 1,024)."""
    part = configured_mib * MIB
    if size > part * max_parts:
        part = -(-size // max_parts // MIB) * MIB + MIB
    return part


def plan_upload(path: Path, manifest: Manifest, part_size: int) -> UploadPlan:
    """One sequential read: whole-file and per-part SHA-256; refuse a file that changed."""
    whole = hashlib.sha256()
    parts: list[Part] = []
    offset = 0
    with open(path, "rb") as handle:
        while True:
            digest = hashlib.sha256()
            size = 0
            while size < part_size:
                block = handle.read(min(CHUNK * 4, part_size - size))
                if not block:
                    break
                digest.update(block)
                whole.update(block)
                size += len(block)
            if size == 0 and parts:
                break
            parts.append(Part(len(parts) + 1, offset, size, _b64(digest.digest())))
            offset += size
            if size < part_size:
                break
    plan = UploadPlan(offset, whole.hexdigest(), parts)
    if plan.size != manifest.archive.size or plan.sha256 != manifest.archive.sha256:
        raise VerificationFailed(
            f"archive {path.name} changed since it was verified",
            f"size {plan.size} (manifest {manifest.archive.size}), SHA-256 differs",
            "the backup is not good any more; it is not uploaded",
        )
    return plan


class Plans:
    """Upload plans of one archive, one per part size, made once for uploads side by side.

    Several targets take the same archive, usually in the same part size: one hashing pass
    serves them all instead of one pass per target. A target thread that asks for a plan
    another thread is making waits for it; a plan that fails (the archive changed) is not kept,
    so every thread sees the failure.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[Path, int], tuple[threading.Lock, list[UploadPlan]]] = {}

    def get(self, path: Path, manifest: Manifest, part_size: int) -> UploadPlan:
        with self._lock:
            lock, made = self._entries.setdefault((path, part_size), (threading.Lock(), []))
        with lock:
            if not made:
                made.append(plan_upload(path, manifest, part_size))
            return made[0]


# --- Object options -------------------------------------------------------------------------------


def object_options(settings: Settings, manifest: Manifest, now: datetime) -> ObjectOptions:
    """Our metadata (the archive's SHA-256, id and kind: checkable without the key) and the
    retention lock for a new archive object."""
    return replace(
        lock_options(settings, now),
        metadata={
            "sha256": manifest.archive.sha256,
            "backup-id": manifest.backup_id,
            "kind": manifest.kind,
        },
        bulk=True,
    )


def lock_options(settings: Settings, now: datetime) -> ObjectOptions:
    """No metadata; LIFEOS_S3_OBJECT_LOCK_DAYS's retention lock from `now`, when set."""
    if not settings.s3_object_lock_days:
        return ObjectOptions()
    return ObjectOptions(
        lock_mode=settings.s3_object_lock_mode,
        lock_until=now + timedelta(days=settings.s3_object_lock_days),
    )


# --- Sending --------------------------------------------------------------------------------------


@dataclass
class Job:
    """One upload in progress: where from, where to, and how."""

    remote: ObjectStore
    catalog: Catalog
    row: Backup
    target: str
    upload_id: str | None  # the target's multipart upload in progress, if any
    archive: Path
    key: str
    plan: UploadPlan
    options: ObjectOptions
    concurrency: int
    throttle: Throttle | None
    progress: ProgressFn


def _put_single(job: Job) -> None:
    fd = os.open(job.archive, os.O_RDONLY)
    try:
        body = RangeReader(fd, 0, job.plan.size, job.throttle)
        job.remote.put(job.key, body, job.plan.size, job.plan.expected_checksum, job.options)
    finally:
        os.close(fd)


def _send_part(job: Job, upload_id: str, part: Part) -> state.DonePart:
    fd = os.open(job.archive, os.O_RDONLY)
    try:
        body = RangeReader(fd, part.offset, part.size, job.throttle)
        etag = job.remote.send_part(job.key, upload_id, part.number, body, part.size, part.checksum)
    finally:
        os.close(fd)
    return state.DonePart(part.number, part.size, etag, part.checksum)


def _resumable(job: Job, upload_id: str) -> dict[int, state.DonePart] | None:
    """Recorded parts that the service still holds unchanged and that the current plan needs."""
    server = job.remote.parts(job.key, upload_id)
    if server is None:
        return None
    recorded = state.recorded_parts(job.catalog, upload_id)  # upload ids never repeat
    planned = {p.number: p for p in job.plan.parts}
    keep: dict[int, state.DonePart] = {}
    for number, done in recorded.items():
        there, want = server.get(number), planned.get(number)
        if (
            there is not None
            and want is not None
            and there.etag == done.etag
            and there.size == done.size == want.size
            and done.checksum == want.checksum
        ):
            keep[number] = done
    return keep


def abort_upload(remote: ObjectStore, key: str, upload_id: str) -> None:
    """Abort a multipart upload so the service drops its parts; an upload already gone is fine."""
    remote.abort(key, upload_id)


def _start_or_resume(job: Job) -> tuple[str, dict[int, state.DonePart]]:
    upload_id = job.upload_id
    if upload_id:
        done = _resumable(job, upload_id)
        if done is not None:
            log.info(
                "resuming upload of %s: %d of %d parts already there",
                job.row.id,
                len(done),
                len(job.plan.parts),
            )
            return upload_id, done
        log.warning("upload %s of %s is gone; starting again", upload_id[:12], job.row.id)
    state.forget_parts(job.catalog, job.row.id, job.target)
    upload_id = job.remote.start_upload(job.key, job.options)
    state.set_copy(job.catalog, job.row.id, job.target, upload_id=upload_id)
    return upload_id, {}


def _put_multipart(job: Job) -> None:
    upload_id, done = _start_or_resume(job)
    report = Progress("uploading", bytes_total=job.plan.size)
    report.bytes_done = sum(p.size for p in done.values())
    todo = [p for p in job.plan.parts if p.number not in done]
    pool = ThreadPoolExecutor(max_workers=job.concurrency, thread_name_prefix="s3-part")
    try:
        running: set[Future[state.DonePart]] = {
            pool.submit(_send_part, job, upload_id, p) for p in todo
        }
        while running:
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                part = future.result()  # raises the part's error: the rest are cancelled below
                state.record_part(job.catalog, job.row.id, upload_id, part, job.target)
                done[part.number] = part
                report.bytes_done += part.size
                job.progress(report)
    except BaseException as exc:
        pool.shutdown(wait=True, cancel_futures=True)
        if _hopeless(exc, job):
            _give_up(job, upload_id)
        raise
    pool.shutdown(wait=True)
    job.remote.complete(
        job.key, upload_id, [(n, done[n].etag, done[n].checksum) for n in sorted(done)]
    )
    state.set_copy(job.catalog, job.row.id, job.target, upload_id=None)
    state.forget_parts(job.catalog, job.row.id, job.target)


def _hopeless(exc: BaseException, job: Job) -> bool:
    """Only a refusal that no retry can fix aborts the upload; anything else keeps it resumable.

    Network trouble, throttling, a worker shutdown or a lost lock (another worker may be
    continuing this very upload) leave the parts in place for the next attempt.
    """
    return job.remote.refused(exc)


def _give_up(job: Job, upload_id: str) -> None:
    """A failure that a retry cannot fix: abort, so no parts are left behind."""
    try:
        abort_upload(job.remote, job.key, upload_id)
    except Exception as exc:  # the sync aborts it later; the original error matters more
        log.warning("could not abort upload of %s: %s", job.row.id, exc)
        return
    state.set_copy(job.catalog, job.row.id, job.target, upload_id=None)
    state.forget_parts(job.catalog, job.row.id, job.target)


# --- Confirming -----------------------------------------------------------------------------------


def remote_mismatch(found: ObjectInfo | None, size: int, sha256: str, checksum: str | None) -> str:
    """Why a HEAD reply is not our archive ('' when it is)."""
    if found is None:
        return "the remote archive is missing"
    if found.size != size:
        return f"the remote archive has {found.size} bytes, expected {size}"
    if found.sha256 != sha256:
        return "the remote archive's SHA-256 metadata differs from the manifest"
    reported = found.checksum
    if checksum and reported and not same_checksum(reported, checksum):
        return "the remote archive's S3 checksum differs (its content changed)"
    if checksum and not reported:
        return "the remote archive carries no SHA-256 checksum"
    return ""


def _confirm(job: Job, settings: Settings) -> None:
    found = job.remote.head(job.key)
    problem = remote_mismatch(found, job.plan.size, job.plan.sha256, job.plan.expected_checksum)
    if problem:
        raise OffsiteError(f"upload of {job.row.id} did not arrive intact", problem)
    assert found is not None
    lock = job.options
    if lock.lock_mode and lock.lock_until and not found.locked_until:
        # Some services ignore the lock given at CreateMultipartUpload; set it explicitly.
        job.remote.retain(job.key, lock.lock_mode, lock.lock_until)


def _put_manifest(
    job: Job,
    mpath: Path,
    manifest: Manifest,
    now: datetime,
    settings: Settings,
    locked: bool = True,
) -> None:
    """The manifest, streamed from its file (hashed in the same pass): a backup of a million files
    has a manifest of a hundred MB or more, never held in memory.

    With encryption on it is sealed to the same recipients as the archives and goes up as
    `<id>.manifest.json.age`: the bucket then holds no member path, size, mode or hash, and no
    table name. It is sealed into an unlinked file of the private state folder (the local manifest
    stays clear, docs/decisions.md) and a clear manifest of the same backup left by an earlier
    upload is deleted once the sealed one is there.
    """
    recipients = parse_recipients(settings.encryption_recipients)
    key = manifest_key(job.key, manifest.backup_id, sealed=bool(recipients))
    if not recipients:
        digest, size = sha256_file(str(mpath))
        options = replace(
            lock_options(settings, now) if locked else ObjectOptions(),
            content_type="application/json",
        )
        with open(mpath, "rb") as body:
            job.remote.put(key, body, size, _b64(bytes.fromhex(digest)), options)
        return
    with tempfile.TemporaryFile(dir=private_dir(settings.state_dir)) as sealed_body:
        digest, size = seal_file(mpath, sealed_body, recipients)
        sealed_body.seek(0)
        options = lock_options(settings, now) if locked else ObjectOptions()
        job.remote.put(key, sealed_body, size, _b64(bytes.fromhex(digest)), options)
    clear = manifest_key(job.key, manifest.backup_id)
    if job.remote.head(clear) is not None:
        job.remote.delete(clear)


# --- The whole upload -----------------------------------------------------------------------------


@dataclass
class Uploaded:
    backup_id: str
    key: str
    size: int
    checksum: str
    seconds: float
    adopted: bool  # it was already there, complete (e.g. after a catalog rebuild)


def _already_there(job: Job, sealed_first: bool) -> bool:
    """The archive is there intact and so is a manifest, sealed or (an older upload) clear."""
    found = job.remote.head(job.key)
    if remote_mismatch(found, job.plan.size, job.plan.sha256, job.plan.expected_checksum):
        return False
    return find_manifest(job.remote, job.key, job.row.id, sealed_first) is not None


def upload_backup(
    backup_id: str,
    settings: Settings,
    catalog: Catalog,
    progress: ProgressFn = ignore,
    only: str | None = None,
) -> Uploaded | None:
    """Copy one verified backup to every target that lacks a good copy, side by side; None (and
    nothing done) when off-site is off.

    Each target is its own thread with its own store, throttle and resumable upload: a failing
    target does not stop or slow the others. Its failure is recorded on its copy
    (status=failed, error), and once every target is done the first failure is raised, so the
    task retries (only the targets still missing their copy) and the sync tries again later.
    `only` limits the upload to one target. Returns the first target's result.
    """
    if not settings.offsite_enabled:
        return None
    targets = configured(settings)
    if only is not None:
        targets = [named(settings, only)]
    row = catalog.get(backup_id)
    if row.status != VERIFIED:
        raise PermanentError(
            f"backup {backup_id} is {row.status}",
            "only verified backups are copied off-site",
            "verify it first (`lifeos-backup verify ID`)",
        )
    held = state.copies(catalog, backup_id)
    todo = [
        t
        for t in targets
        if only is not None
        or len(targets) == 1
        or getattr(held.get(t.name), "status", None) != state.UPLOADED
    ]
    if not todo:
        return None if not targets else _known(catalog, backup_id, targets[0])
    if len(todo) == 1:
        return upload_to(backup_id, todo[0], settings, catalog, progress)
    results: dict[str, Uploaded | LifeosError] = {}
    plans = Plans()
    with ThreadPoolExecutor(max_workers=len(todo), thread_name_prefix="offsite") as pool:
        futures = {
            t.name: pool.submit(upload_to, backup_id, t, settings, catalog, progress, None, plans)
            for t in todo
        }
        for name, future in futures.items():
            try:
                results[name] = future.result()
            except LifeosError as exc:
                results[name] = exc
    failures = [r for r in results.values() if isinstance(r, LifeosError)]
    if failures:
        raise failures[0]
    first = results.get(targets[0].name)
    return first if isinstance(first, Uploaded) else _known(catalog, backup_id, targets[0])


def _known(catalog: Catalog, backup_id: str, target: Target) -> Uploaded:
    """A copy uploaded before, as an upload's result (nothing sent now)."""
    held = state.copy_on(catalog, backup_id, target.name)
    row = catalog.get(backup_id)
    return Uploaded(backup_id, held.key or "", row.size or 0, held.checksum or "", 0.0, True)


def upload_to(
    backup_id: str,
    target: Target,
    settings: Settings,
    catalog: Catalog,
    progress: ProgressFn = ignore,
    source: Path | None = None,
    plans: Plans | None = None,
) -> Uploaded:
    """Copy one verified backup to one target (resuming an upload left unfinished there).

    `source`: an archive to send instead of the local one, its manifest beside it (a copy
    downloaded from another target, for the sync's repair); the key stays the backup's own.
    `plans`: shared with the other targets' uploads of the same archive (one hashing pass).
    Failures are recorded on the copy (status=failed, error); the local backup's own status is
    untouched unless its local archive no longer matches its manifest.
    """
    row = catalog.get(backup_id)
    started = time.monotonic()
    archive = source or settings.backup_root / row.path
    mpath = manifest_path(archive, backup_id)
    held = state.copy_on(catalog, backup_id, target.name)
    attempts = (held.attempts or 0) + 1
    try:
        remote = connect(target, settings)
        if not archive.exists():
            raise PermanentError(
                f"backup {backup_id} has no local archive to upload",
                str(archive),
                "its local copy is gone (rotated or lost); nothing to upload",
            )
        manifest = read_manifest(mpath)
        with remote.errors(f"upload of {backup_id} to {target.name}"):
            remote.head(remote.key(row.path))  # fails fast when the endpoint is down
            state.mark(catalog, backup_id, state.UPLOADING, target.name, attempts=attempts)
            max_parts = getattr(remote, "max_parts", MAX_PARTS)
            part_size = part_size_for(manifest.archive.size, settings.s3_part_size_mb, max_parts)
            plan = (plans or Plans()).get(archive, manifest, part_size)
            now = utcnow()
            options = object_options(settings, manifest, now)
            if not target.legacy:  # Object Lock is LIFEOS_S3_*'s (the target `s3`)
                options = replace(options, lock_mode=None, lock_until=None)
            job = Job(
                remote=remote,
                catalog=catalog,
                row=catalog.get(backup_id),
                target=target.name,
                upload_id=state.copy_on(catalog, backup_id, target.name).upload_id,
                archive=archive,
                key=remote.key(row.path),
                plan=plan,
                options=options,
                concurrency=settings.s3_concurrency,
                throttle=throttle_for(settings, target),
                progress=progress,
            )
            if plan.single and job.upload_id:  # left over from a larger part plan
                _give_up(job, job.upload_id)
            adopted = _already_there(job, bool(settings.encryption_recipients))
            if adopted:
                pass
            elif plan.single:
                _put_single(job)
            else:
                _put_multipart(job)
            if not adopted:
                _confirm(job, settings)
                _put_manifest(job, mpath, manifest, now, settings, target.legacy)  # last
    except LifeosError as exc:
        fields: dict[str, object] = {"error": str(exc)[:4000], "attempts": attempts}
        if isinstance(exc, VerificationFailed) and source is None:
            catalog.update(backup_id, status=LOCAL_FAILED, error=str(exc)[:4000])
        state.mark(catalog, backup_id, state.FAILED, target.name, **fields)
        log.error(
            "off-site upload of %s to %s failed (attempt %d): %s",
            backup_id,
            target.name,
            attempts,
            exc,
        )
        raise
    finished = utcnow()
    state.mark(
        catalog,
        backup_id,
        state.UPLOADED,
        target.name,
        key=job.key,
        checksum=plan.expected_checksum,
        uploaded_at=finished,
        error=None,
        upload_id=None,
    )
    seconds = time.monotonic() - started
    log.info(
        "%s %s to %s (%d bytes, %.1fs)",
        "found" if adopted else "uploaded",
        backup_id,
        remote.where,
        plan.size,
        seconds,
    )
    return Uploaded(backup_id, job.key, plan.size, plan.expected_checksum, seconds, adopted)
