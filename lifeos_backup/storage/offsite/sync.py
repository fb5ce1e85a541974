"""The daily off-site sync: find silent remote loss, clean up, upload what is missing, expire.

Order matters: re-check first (a damaged or vanished remote copy becomes "not off-site" and is
uploaded again in the same run, if its local copy is still good), then abort multipart uploads
that nobody will resume, then upload, then repair from another target the copies whose local
copy is gone, then apply remote retention (which only counts remote copies confirmed by that
point).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from lifeos_backup.core.errors import AlreadyRunning, DecryptionKeyError, LifeosError
from lifeos_backup.core.progress import ProgressFn, ignore
from lifeos_backup.core.settings import Settings
from lifeos_backup.core.targets import LEGACY_NAME, Target
from lifeos_backup.storage.catalog import Backup, Catalog
from lifeos_backup.storage.catalog.models import OffsiteCopy
from lifeos_backup.storage.catalog.store import VERIFIED, utcnow
from lifeos_backup.storage.offsite import state
from lifeos_backup.storage.offsite.download import fetched
from lifeos_backup.storage.offsite.store import ObjectStore, find_manifest, manifest_keys
from lifeos_backup.storage.offsite.targets import configured, connect, retention
from lifeos_backup.storage.offsite.upload import (
    Plans,
    abort_upload,
    remote_mismatch,
    upload_backup,
    upload_to,
)
from lifeos_backup.storage.retention import Candidate, Decision, plan
from lifeos_backup.storage.retention import parse_policy as parse_retention

log = logging.getLogger(__name__)
LockFn = Callable[[str], AbstractContextManager[object]]  # name -> held lock or AlreadyRunning


@dataclass
class SyncReport:
    """What one sync did; returned by the task (so Flower shows it) and printed by the CLI."""

    skipped: str | None = None
    checked: int = 0
    read_back: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    aborted: list[str] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # "<id> on <target> from <target>"
    failed: dict[str, str] = field(default_factory=dict)
    expired: list[str] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)  # target -> why

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


# --- Re-checking remote copies --------------------------------------------------------------------


def read_back(remote: ObjectStore, row: Backup, key: str | None = None) -> str:
    """Read the whole remote archive and compare size and SHA-256 with the catalog ('' if ok)."""
    key = key or row.offsite_key
    assert key
    digest, size = hashlib.sha256(), 0
    for chunk in remote.chunks(key):
        digest.update(chunk)
        size += len(chunk)
    if size != row.size:
        return f"the remote archive has {size} bytes, expected {row.size}"
    if digest.hexdigest() != row.sha256:
        return "the remote archive's content does not match its SHA-256 (read back in full)"
    return ""


def check_remote(
    remote: ObjectStore,
    row: Backup,
    full: bool,
    sealed_first: bool = False,
    held: OffsiteCopy | None = None,
) -> tuple[str, str]:
    """(status, problem) of one remote copy (`held`, else the summary's): HEAD of archive and
    manifest (sealed or clear: only its presence is checked, so no key is needed), and a full
    read of the archive."""
    key = held.key if held is not None else row.offsite_key
    checksum = held.checksum if held is not None else row.offsite_checksum
    assert key and row.size is not None and row.sha256
    found = remote.head(key)
    problem = remote_mismatch(found, row.size, row.sha256, checksum)
    if found is None:
        return state.MISSING, problem
    if not problem and find_manifest(remote, key, row.id, sealed_first) is None:
        return state.MISSING, "the remote manifest is missing"
    if not problem and full:
        problem = read_back(remote, row, key)
    return (state.DAMAGED, problem) if problem else (state.UPLOADED, "")


def recheck(
    remote: ObjectStore,
    settings: Settings,
    catalog: Catalog,
    report: SyncReport,
    target: str = LEGACY_NAME,
) -> None:
    """HEAD every copy on `target`; read back in full the `offsite_sync_sample` least recently
    read."""
    rows = state.uploaded(catalog, target)
    held = {r.id: state.copy_on(catalog, r.id, target) for r in rows}
    by_age = sorted(rows, key=lambda r: state.checked_before(held[r.id]))
    sample = {r.id for r in by_age[: settings.offsite_sync_sample]}
    for row in rows:
        full = row.id in sample
        with remote.errors(f"re-check of {row.id} on {target}"):
            status, problem = check_remote(
                remote, row, full, bool(settings.encryption_recipients), held[row.id]
            )
        report.checked += 1
        if full and not problem:
            report.read_back.append(row.id)
            state.set_copy(catalog, row.id, target, checked_at=utcnow())
        if problem:
            report.problems[row.id] = problem
            state.mark(catalog, row.id, status, target, error=f"re-check: {problem}")
            log.error("off-site copy of %s on %s is %s: %s", row.id, target, status, problem)


# --- Orphan multipart uploads ---------------------------------------------------------------------


def abort_orphans(
    remote: ObjectStore,
    settings: Settings,
    catalog: Catalog,
    lock: LockFn,
    report: SyncReport,
    target: str = LEGACY_NAME,
) -> None:
    """Abort multipart uploads under our prefix that no upload will resume.

    Resumable means: recorded on a row that is still to be uploaded. An upload whose lock is held
    is running right now and is left alone, whatever the catalog says.
    """
    pending = state.to_upload(catalog, settings.backup_root, [target])
    copies = {r.id: state.copy_on(catalog, r.id, target) for r in catalog.list()}
    resumable = {copies[r.id].upload_id for r in pending if copies[r.id].upload_id}
    for key, upload_id in remote.uploads(remote.root):
        if upload_id in resumable:
            continue
        backup_id = key.rsplit("/", 1)[-1].split(".", 1)[0]
        try:
            with lock(f"upload:{backup_id}"):
                abort_upload(remote, key, upload_id)
        except AlreadyRunning:
            continue
        report.aborted.append(key)
        log.warning("aborted orphan multipart upload of %s", key)
    for backup_id, held in copies.items():
        if held.upload_id and held.upload_id not in resumable:
            state.set_copy(catalog, backup_id, target, upload_id=None)
            state.forget_parts(catalog, backup_id, target)


# --- Remote retention -----------------------------------------------------------------------------


def plan_remote(
    settings: Settings, catalog: Catalog, now: datetime, target: Target | None = None
) -> dict[str, list[Decision]]:
    """Per kind, which copies on `target` retention would delete (the newest is always kept)."""
    target = target or configured(settings)[0]
    policy = parse_retention(retention(target, settings))
    rows = state.uploaded(catalog, target.name)
    out: dict[str, list[Decision]] = {}
    for kind in sorted({r.kind for r in rows}):
        candidates = [Candidate(r.id, r.created_at, VERIFIED) for r in rows if r.kind == kind]
        out[kind] = plan(candidates, policy, now, timedelta(0)).delete
    return out


def expire_remote(
    remote: ObjectStore,
    settings: Settings,
    catalog: Catalog,
    dry_run: bool = False,
    target: Target | None = None,
) -> list[Decision]:
    """Apply the target's retention; manifest first, so a half-deleted copy is incomplete."""
    target = target or configured(settings)[0]
    now = utcnow()
    decided = [d for ds in plan_remote(settings, catalog, now, target).values() for d in ds]
    if dry_run:
        return decided
    held = state.copies_by_backup(catalog)
    unfinished = [
        r.id for r in catalog.list() if state.status_on(held, r.id, target.name) == state.DELETING
    ]
    for backup_id in [*unfinished, *(d.id for d in decided)]:
        reasons = next((", ".join(d.reasons) for d in decided if d.id == backup_id), "")
        delete_remote(remote, catalog, backup_id, reasons, "remote retention", target.name)
    return decided


def delete_remote(
    remote: ObjectStore,
    catalog: Catalog,
    backup_id: str,
    reasons: str,
    who: str,
    target: str = LEGACY_NAME,
) -> None:
    """Remove a backup's remote copy: marked `deleting`, then its manifest (sealed and clear, so a
    half-deleted copy is incomplete), its archive and any multipart upload left, then marked
    `deleted`. Remote
    retention and `forget` both delete through here; a copy left `deleting` by a crash is
    finished by the next sync (`expire_remote`)."""
    held = state.copy_on(catalog, backup_id, target)
    if not held.key and held.status is None:
        return  # never on this target
    if not held.key:
        state.mark(catalog, backup_id, state.DELETED, target, error=reasons or None)
        return
    state.mark(catalog, backup_id, state.DELETING, target)
    with remote.errors(f"{who} of {backup_id} on {target}"):
        for key in [*manifest_keys(held.key, backup_id), held.key]:
            remote.delete(key)
        if held.upload_id:
            abort_upload(remote, held.key, held.upload_id)
    if held.upload_id:
        state.set_copy(catalog, backup_id, target, upload_id=None)
        state.forget_parts(catalog, backup_id, target)
    state.mark(catalog, backup_id, state.DELETED, target, error=reasons or None)
    log.info("%s deleted the copy of %s on %s (%s)", who, backup_id, target, reasons)


# --- Repair from another target ------------------------------------------------------------------

NEEDS_REPAIR = (state.UPLOADING, state.FAILED, state.MISSING, state.DAMAGED)


def to_repair(
    catalog: Catalog, backup_root: Path, targets: list[str]
) -> list[tuple[Backup, str, list[str]]]:
    """(backup, healthy targets, targets to repair) for each backup whose local copy is gone,
    that has a good copy on one of `targets` and a missing, damaged or failed one on another;
    oldest first."""
    held = state.copies_by_backup(catalog)
    out: list[tuple[Backup, str, list[str]]] = []
    for row in sorted(catalog.list(), key=lambda r: (r.created_at, r.id)):
        if row.id not in held or state.is_local(row, backup_root) or not row.size:
            continue
        good = [t for t in targets if state.status_on(held, row.id, t) == state.UPLOADED]
        bad = [t for t in targets if state.status_on(held, row.id, t) in NEEDS_REPAIR]
        if good and bad:
            out.append((row, good[0], bad))
    return out


def repair(
    settings: Settings,
    catalog: Catalog,
    targets: list[Target],
    lock: LockFn,
    report: SyncReport,
    progress: ProgressFn = ignore,
) -> None:
    """Copy a good remote copy to the targets whose copy is missing or damaged, when the local
    copy is gone: streamed from the healthy target into a private scratch folder (SHA-256 checked
    against the manifest on the way), then the usual resumable upload from there."""
    by_name = {t.name: t for t in targets}
    for row, healthy, bad in to_repair(catalog, settings.backup_root, list(by_name)):
        try:
            with (
                lock(f"upload:{row.id}"),
                fetched(row.id, settings, catalog, progress, healthy) as (archive, _manifest),
            ):
                plans = Plans()  # one hashing pass for every damaged target
                for name in bad:
                    try:
                        upload_to(
                            row.id, by_name[name], settings, catalog, progress, archive, plans
                        )
                    except LifeosError as exc:
                        report.failed[f"{row.id} on {name}"] = str(exc)
                        continue
                    report.repaired.append(f"{row.id} on {name} from {healthy}")
                    log.info("repaired the copy of %s on %s from %s", row.id, name, healthy)
        except AlreadyRunning:
            continue
        except DecryptionKeyError as exc:  # sealed manifests: the worker may not hold the key
            report.problems[row.id] = f"not repaired from {healthy}: {exc}"
            log.warning("copy of %s not repaired from %s: %s", row.id, healthy, exc)
        except (LifeosError, OSError) as exc:
            report.failed[f"{row.id} from {healthy}"] = str(exc)
            log.error("repair of %s from %s failed: %s", row.id, healthy, exc)


# --- The sync -------------------------------------------------------------------------------------


def sync(
    settings: Settings, catalog: Catalog, lock: LockFn, progress: ProgressFn = ignore
) -> SyncReport:
    """One off-site sync over every target; uploads that fail are reported (and recorded), not
    fatal to the rest, and a target that cannot be reached is reported and skipped (the others
    go on). Per target: re-check, abort orphans; then upload what any target lacks (every target
    side by side); then repair from a healthy target the copies whose local copy is gone; then
    each target's retention."""
    report = SyncReport()
    if not settings.offsite_enabled:
        report.skipped = "off-site copies are off (LIFEOS_S3_BUCKET is not set)"
        return report
    targets = configured(settings)
    reached: list[tuple[Target, ObjectStore]] = []
    for target in targets:
        try:
            remote = connect(target, settings)
            recheck(remote, settings, catalog, report, target.name)
            with remote.errors(f"listing multipart uploads on {target.name}"):
                abort_orphans(remote, settings, catalog, lock, report, target.name)
        except LifeosError as exc:
            if len(targets) == 1:
                raise
            report.unreachable[target.name] = str(exc)
            log.error("off-site target %s: %s", target.name, exc)
            continue
        reached.append((target, remote))
    names = [t.name for t in targets]
    for row in state.to_upload(catalog, settings.backup_root, names):
        try:
            with lock(f"upload:{row.id}"):
                upload_backup(row.id, settings, catalog, progress)
        except AlreadyRunning:
            continue
        except LifeosError as exc:
            report.failed[row.id] = str(exc)
            continue
        report.uploaded.append(row.id)
    if len(reached) > 1:
        repair(settings, catalog, [t for t, _ in reached], lock, report, progress)
    for target, remote in reached:
        try:
            expired = expire_remote(remote, settings, catalog, False, target)
            report.expired += [d.id for d in expired]
        except LifeosError as exc:
            if len(targets) == 1:
                raise
            report.unreachable[target.name] = str(exc)
    return report
