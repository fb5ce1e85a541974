"""The life of a backup, shared by every kind: create, verify and rotate.

A backup is `running` while written, `created` once archive and manifest are on disk, `verified`
only after its verify step passed (the only status that counts as good), `failed` or `deleted`
(`catalog rebuild` also lists `unverified` and `incomplete` ones: lifeos_backup.jobs.rebuild).
These functions assume the caller holds the kind's lock where one is needed (tasks and CLI do).
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from lifeos_backup import __version__
from lifeos_backup.core.errors import LifeosError, NotFound, RetryableError, VerificationFailed
from lifeos_backup.core.fsutil import private_dir, remove_quietly
from lifeos_backup.core.names import check_backup_id
from lifeos_backup.core.progress import ProgressFn, ignore
from lifeos_backup.core.settings import Settings
from lifeos_backup.formats.crypto import check_sealed
from lifeos_backup.formats.manifest import (
    ArchiveInfo,
    Compression,
    Manifest,
    manifest_path,
    read_manifest,
    write_manifest,
)
from lifeos_backup.jobs.deletion import finish_deletions, remove_local
from lifeos_backup.jobs.leases import lease, try_lease
from lifeos_backup.jobs.leftovers import INTERRUPTED, clean_leftovers
from lifeos_backup.kinds.registry import get_kind
from lifeos_backup.storage.catalog import Backup, Catalog
from lifeos_backup.storage.catalog.store import (
    CREATED,
    DELETED,
    DELETING,
    FAILED,
    RUNNING,
    VERIFIED,
    utcnow,
)
from lifeos_backup.storage.offsite.state import remote_only
from lifeos_backup.storage.repository import kind_dir, locate, new_backup_id
from lifeos_backup.storage.retention import Candidate, Plan, parse_policy, plan

log = logging.getLogger(__name__)


def _free_id(kind: str, catalog: Catalog) -> tuple[str, datetime]:
    """A new id from the current UTC second; waits for the next second if this one is taken."""
    while True:
        now = utcnow()
        backup_id = new_backup_id(kind, now)
        if not catalog.exists(backup_id):
            return backup_id, now.replace(microsecond=0)
        time.sleep(1.0 - now.microsecond / 1e6 + 0.01)


def _id_for(kind: str, catalog: Catalog, owner: str, attempt: int) -> tuple[str, datetime, str]:
    """The backup's id, start time and earlier attempts' errors: a retry of a task (attempt >
    1) takes over the failed row of its earlier attempt, so one request is one row."""
    earlier = catalog.by_task(owner, kind) if attempt > 1 and owner != "cli" else None
    if earlier is not None and earlier.status == FAILED:
        return earlier.id, utcnow().replace(microsecond=0), earlier.error or ""
    backup_id, started = _free_id(kind, catalog)
    return backup_id, started, ""


def create_backup(
    kind_name: str,
    settings: Settings,
    catalog: Catalog,
    *,
    reason: str = "",
    initiator: str = "operator",
    progress: ProgressFn = ignore,
    owner: str = "cli",
    then: str | None = None,
    attempt: int = 1,
) -> Manifest:
    """Write a new archive and its manifest; the backup ends `created` (not yet good).

    The caller holds the kind's lock. `owner` is the task writing it (or `cli`); `then` the task
    that verifies it next, recorded so the sweeper can tell a waiting backup from a lost one.
    The backup's lease is held from before its catalog row exists until it is `created`.
    `attempt` > 1 (a retry) reuses the row of the task's earlier attempt, its errors kept.
    """
    kind = get_kind(kind_name)
    folder = private_dir(kind_dir(settings.backup_root, kind_name))
    clean_leftovers(kind_name, settings, catalog, owner)
    backup_id, started, earlier = _id_for(kind_name, catalog, owner, attempt)
    archive = folder / (backup_id + kind.extension(settings))
    host = socket.gethostname()
    with lease(settings.backup_root, backup_id, owner, "create"):
        catalog.add_backup(
            Backup(
                id=backup_id,
                kind=kind_name,
                status=RUNNING,
                path=str(archive.relative_to(settings.backup_root)),
                reason=reason,
                initiator=initiator,
                host=host,
                created_at=started,
                task_id=owner,
            )
        )
        mpath = manifest_path(archive, backup_id)
        written = None
        try:
            written = kind.write(settings, archive, progress)
            finished = utcnow()
            manifest = Manifest(
                backup_id=backup_id,
                kind=kind_name,
                created_at=started,
                finished_at=finished,
                host=host,
                tool_version=__version__,
                reason=reason,
                initiator=initiator,
                sources=written.sources,
                compression=Compression(algorithm=written.algorithm, level=written.level),
                archive=ArchiveInfo(name=archive.name, size=written.size, sha256=written.sha256),
                files=written.files,
                facts=written.facts,
                encryption=written.encryption,
            )
            # last: an archive without a manifest is incomplete
            write_manifest(mpath, manifest, written.entries)
            manifest.entries_in(mpath)  # read back from there when needed, not held
        except BaseException as exc:
            remove_quietly(mpath, archive)
            error = f"attempt {attempt}: {exc}" if attempt > 1 or earlier else str(exc)
            history = f"{error}; earlier {earlier}" if earlier else error
            catalog.update(backup_id, status=FAILED, error=history[:4000], finished_at=utcnow())
            raise
        finally:
            if written is not None and written.entries is not None:
                written.entries.close()
        catalog.update(
            backup_id,
            status=CREATED,
            size=written.size,
            sha256=written.sha256,
            finished_at=finished,
            duration_s=(finished - started).total_seconds(),
            task_id=then,
            error=None,
        )
    log.info("created %s (%d bytes)", backup_id, written.size)
    return manifest


def require_local_files(settings: Settings, row: Backup, archive: Path, mpath: Path) -> None:
    """Both files of a backup on this disk, else why not: only off-site (not a damaged backup)
    or incomplete (archive or manifest gone). Verify and every local restore ask this first."""
    if remote_only(row, settings.backup_root):
        raise NotFound(
            f"backup {row.id} is only off-site",
            hint="restore it with --from offsite; the sync re-checks remote copies",
        )
    if not mpath.exists() or not archive.exists():
        raise VerificationFailed(
            f"backup {row.id} is incomplete on disk",
            f"{'manifest' if not mpath.exists() else 'archive'} missing",
            "use another backup (`lifeos-backup list`), or this one's off-site copy if it has "
            "one (--from offsite)",
        )


def check_files(
    settings: Settings, archive: Path, manifest: Manifest, progress: ProgressFn = ignore
) -> str:
    """Re-read `archive` against `manifest`; raise VerificationFailed, or return the scope checked:
    "content" (every member), or "ciphertext" for an encrypted backup without the private key
    (size, SHA-256, age header; writers hold only public keys)."""
    if manifest.encryption and settings.encryption_identity_file is None:
        check_sealed(archive, manifest, progress)
        # what a kind can check beyond the bytes without the key (basebackup: its WAL)
        check_more = getattr(get_kind(manifest.kind), "check_without_key", None)
        if check_more is not None:
            check_more(archive, manifest, progress)
        return "ciphertext"
    get_kind(manifest.kind).check(archive, manifest, progress)
    return "content"


def verify_backup(
    backup_id: str,
    settings: Settings,
    catalog: Catalog,
    progress: ProgressFn = ignore,
    owner: str = "cli",
) -> Manifest:
    """Re-read the archive and check it against its manifest; only then mark it verified.

    Holds the backup's lease (LeaseBusy while another process writes or verifies it), so the
    clean-up never removes the manifest being rewritten here.
    """
    with lease(settings.backup_root, check_backup_id(backup_id), owner, "verify"):
        row, archive, mpath = locate(settings, catalog, backup_id)
        try:
            if row.status == RUNNING:  # the lease is ours: its writer is gone
                raise VerificationFailed(f"backup {backup_id} was never finished", INTERRUPTED)
            require_local_files(settings, row, archive, mpath)  # off-site only: not a failure
            manifest = read_manifest(mpath)
            scope = check_files(settings, archive, manifest, progress)
        except (NotFound, RetryableError):
            raise  # nothing wrong with the backup itself (off-site only; try again later)
        except Exception as exc:  # a backup that cannot be checked is no good backup
            error = (
                str(exc)
                if isinstance(exc, LifeosError)
                else f"verify failed: {type(exc).__name__}: {exc}"
            )
            catalog.update(backup_id, status=FAILED, error=error[:4000])
            raise
        now = utcnow()
        manifest.verified_at = now
        manifest.verified_scope = scope  # type: ignore[assignment]
        write_manifest(mpath, manifest)
        catalog.update(backup_id, status=VERIFIED, verified_at=now, error=None, task_id=None)
    log.info("verified %s", backup_id)
    return manifest


@dataclass
class RotationResult:
    kind: str
    plan: Plan
    dry_run: bool
    # What a kind's own rotation step removed besides backups (e.g. archived WAL of basebackup).
    extra_removed: list[str] = field(default_factory=list)


def rotation_policy(settings: Settings, kind: str) -> str:
    return str(getattr(settings, f"retention_{kind}"))


def rotate(
    kind: str,
    settings: Settings,
    catalog: Catalog,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
) -> RotationResult:
    """Apply the kind's retention policy; with dry_run only report what would go and why."""
    policy = parse_policy(rotation_policy(settings, kind))
    rows = catalog.list(kind=kind)
    candidates = [
        Candidate(r.id, r.created_at, r.status)
        for r in rows
        if r.status not in (DELETED, DELETING) and not remote_only(r, settings.backup_root)
    ]
    decided = plan(
        candidates, policy, now or utcnow(), timedelta(hours=settings.retention_grace_hours)
    )
    if not dry_run:
        finish_deletions(settings, catalog, "rotation")  # what a killed `forget` left
        for decision in decided.delete:
            with try_lease(settings.backup_root, decision.id, "rotation", "delete") as free:
                if not free:  # being verified, written or cleaned right now: next rotation
                    log.info("rotation left %s for now: it is busy", decision.id)
                    continue
                remove_local(settings, catalog, decision.id, "; ".join(decision.reasons))
            log.info("rotation deleted %s (%s)", decision.id, ", ".join(decision.reasons))
    after_rotate = getattr(get_kind(kind), "after_rotate", None)  # optional per-kind step
    extra = after_rotate(settings, catalog, dry_run) if after_rotate is not None else []
    return RotationResult(kind, decided, dry_run, extra)
