"""Restores asked for in the dashboard: four eyes over production, one pair elsewhere.

- Over production (lifeos_backup.web.guard: the database of LIFEOS_DATABASE_URL, or the app
  folder): an admin asks, the request waits `pending`, and a *different* admin approves it (or
  either rejects it); only then is it enqueued.
- Into a new database or folder: an operator (or admin) asks, and it is enqueued at once.

Approval is a compare-and-set (`pending` -> `approved` in one UPDATE), so of two admins
approving at once exactly one wins and the restore is enqueued once. The worker's task claims the
request the same way (`approved` -> `running`), so a redelivered message never restores twice.
Every step is in the audit trail (restore.request, restore.approve, restore.reject) and the
restore itself is recorded as the CLI's are (restore.json, restore.postgres), with who asked and
who approved.

The restore runs the same functions as `lifeos-backup restore json|postgres`: the target check,
the archive verified while extracting, the row counts compared with the manifest.

A running restore holds a file lock (`.state/restore-requests/<id>.lock`), which the kernel drops
when its worker dies, SIGKILL included. A request left `running` whose lock is free was abandoned:
the redelivered message and the sweeper (at worker start, with every health check) mark it
`failed`, saying that its target may be half-restored, instead of leaving it `running` for good.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from lifeos_backup.core.errors import ConfigError, NotFound, PermanentError
from lifeos_backup.core.fsutil import FILE_MODE, private_dir
from lifeos_backup.core.names import check_backup_id, kind_of_id
from lifeos_backup.core.progress import ProgressFn, ignore
from lifeos_backup.core.settings import Settings
from lifeos_backup.storage.audit import audited
from lifeos_backup.storage.catalog import Catalog
from lifeos_backup.storage.catalog.models import RestoreRequest
from lifeos_backup.storage.catalog.store import VERIFIED, utcnow
from lifeos_backup.web import guard
from lifeos_backup.web.accounts import ADMIN, OPERATOR, Account, changed

RESTORE_TASK = "lifeos.restore.run"
PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"
RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"
RESTORABLE = (guard.JSON, guard.POSTGRES)

Enqueue = Callable[[int, str], str]  # (request id, initiator) -> task id
LOCKS = Path(".state") / "restore-requests"
ABANDONED = (
    "the worker running this restore died (killed, or its host restarted): the target may be "
    "half-restored; check it, then ask for the restore again"
)


class NotAllowed(PermanentError):
    """The account's role, or the four-eyes rule, does not allow this."""


class AlreadyDecided(PermanentError):
    """Someone else approved, rejected or ran the request first."""


def get(catalog: Catalog, request_id: int) -> RestoreRequest:
    with catalog.session() as s:
        row = s.get(RestoreRequest, request_id)
    if row is None:
        raise NotFound(f"no restore request {request_id}")
    return row


def recent(catalog: Catalog, limit: int = 50) -> list[RestoreRequest]:
    with catalog.session() as s:
        query = select(RestoreRequest).order_by(RestoreRequest.id.desc()).limit(limit)
        return list(s.scalars(query))


def pending(catalog: Catalog) -> list[RestoreRequest]:
    with catalog.session() as s:
        query = select(RestoreRequest).where(RestoreRequest.status == PENDING)
        return list(s.scalars(query.order_by(RestoreRequest.id)))


def _check_target(settings: Settings, kind: str, target: str) -> str:
    """A folder must be absolute (the worker's working folder is nobody's business); a database
    a plain name (a URL could carry a password into the catalog and the audit trail)."""
    target = target.strip()
    if not target:
        raise ConfigError("a restore target is needed", hint="a folder, or a database name")
    if kind == guard.JSON:
        if not Path(target).is_absolute() or "\0" in target:
            raise ConfigError(f"{target!r} is not an absolute folder", hint="e.g. /srv/restore")
        return str(Path(target))
    if "://" in target or "=" in target or not target.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(
            f"{target!r} is not a database name",
            "letters, digits, '_' and '-' only",
            "the server is the one of LIFEOS_DATABASE_URL",
        )
    return target


def request(
    settings: Settings,
    catalog: Catalog,
    account: Account,
    backup_id: str,
    target: str,
    enqueue: Enqueue,
) -> RestoreRequest:
    """Ask for a restore; enqueued now unless it goes over production (then it waits)."""
    check_backup_id(backup_id)
    kind = kind_of_id(backup_id)
    if kind not in RESTORABLE:
        raise ConfigError(
            f"backup {backup_id} is restored with the command line",
            hint="`lifeos-backup restore pitr` (point-in-time recovery)",
        )
    row = catalog.get(backup_id)
    if row.status != VERIFIED:
        raise ConfigError(f"backup {backup_id} is {row.status}, not verified", hint="pick another")
    target = _check_target(settings, kind, target)
    production = guard.is_production(settings, kind, target)
    needed = ADMIN if production else OPERATOR
    if not account.may(needed):
        raise NotAllowed(
            f"a restore {'over production' if production else 'into a new target'} needs the "
            f"{needed} role",
            f"{account.name} is {account.role}",
        )
    with catalog.session() as s:
        req = RestoreRequest(
            backup_id=backup_id, kind=kind, target=target, production=production,
            status=PENDING if production else APPROVED, requested_by=account.name,
            requested_at=utcnow(),
            approved_by=None if production else account.name,
            approved_at=None if production else utcnow(),
        )  # fmt: skip
        s.add(req)
        s.flush()
        request_id = req.id
    detail: dict[str, Any] = {"request": request_id, "target": target, "production": production}
    catalog.record_action(
        "restore.request", backup_id, account.name, detail, backup_id=backup_id,
        status=PENDING if production else "succeeded",
    )  # fmt: skip
    if not production:
        _enqueue(catalog, request_id, account.name, enqueue)
    return get(catalog, request_id)


def _set(catalog: Catalog, request_id: int, only_if: str | None, **values: Any) -> bool:
    """Update one request; with `only_if`, only while it has that status (a compare-and-set:
    of two racing callers one wins). True when the row changed."""
    statement = update(RestoreRequest).where(RestoreRequest.id == request_id)
    if only_if is not None:
        statement = statement.where(RestoreRequest.status == only_if)
    with catalog.session() as s:
        return bool(changed(s, statement.values(**values)))


def approve(
    catalog: Catalog, account: Account, request_id: int, enqueue: Enqueue
) -> RestoreRequest:
    """A second admin approves a production restore: enqueued once, by whoever wins the race."""
    req = get(catalog, request_id)
    if not account.may(ADMIN):
        raise NotAllowed(
            "approving a restore needs the admin role", f"{account.name} is {account.role}"
        )
    if req.requested_by == account.name:
        raise NotAllowed(
            "a restore over production needs a second admin",
            f"{account.name} asked for request {request_id}",
            "another admin approves it",
        )
    won = _set(
        catalog, request_id, PENDING,
        status=APPROVED, approved_by=account.name, approved_at=utcnow(),
    )  # fmt: skip
    if not won:
        now = get(catalog, request_id)
        raise AlreadyDecided(
            f"restore request {request_id} is {now.status} already",
            f"by {now.approved_by}" if now.approved_by else "",
        )
    catalog.record_action(
        "restore.approve", req.backup_id, account.name,
        {"request": request_id, "requested_by": req.requested_by, "target": req.target},
        backup_id=req.backup_id,
    )  # fmt: skip
    _enqueue(catalog, request_id, req.requested_by, enqueue)
    return get(catalog, request_id)


def reject(catalog: Catalog, account: Account, request_id: int) -> RestoreRequest:
    """An admin (the requester too: a withdrawal) turns a pending request down."""
    req = get(catalog, request_id)
    if not account.may(ADMIN):
        raise NotAllowed(
            "rejecting a restore needs the admin role", f"{account.name} is {account.role}"
        )
    won = _set(
        catalog, request_id, PENDING,
        status=REJECTED, approved_by=account.name, finished_at=utcnow(),
    )  # fmt: skip
    if not won:
        raise AlreadyDecided(f"restore request {request_id} is {get(catalog, request_id).status}")
    catalog.record_action(
        "restore.reject", req.backup_id, account.name,
        {"request": request_id, "requested_by": req.requested_by}, backup_id=req.backup_id,
    )  # fmt: skip
    return get(catalog, request_id)


def _enqueue(catalog: Catalog, request_id: int, initiator: str, enqueue: Enqueue) -> None:
    try:
        task_id = enqueue(request_id, initiator)
    except Exception as exc:  # Redis down: the request stays approved, and says why
        _finish(catalog, request_id, APPROVED, f"not enqueued: {exc}"[:2000], finished=False)
        raise
    _set(catalog, request_id, None, task_id=task_id)


def _finish(
    catalog: Catalog, request_id: int, status: str, error: str | None, finished: bool = True
) -> None:
    _set(catalog, request_id, None, status=status, error=error,
         finished_at=utcnow() if finished else None)  # fmt: skip


def claim(catalog: Catalog, request_id: int) -> bool:
    """`approved` -> `running`, once; False when it is not (any more) approved."""
    return _set(catalog, request_id, APPROVED, status=RUNNING)


@contextlib.contextmanager
def _running_lock(settings: Settings, request_id: int) -> Iterator[bool]:
    """The request's lock, taken without waiting: True while held (removed on release), False
    when a live process holds it."""
    path = private_dir(settings.backup_root / LOCKS) / f"{int(request_id)}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            yield False
            return
        try:
            yield True
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # after the status is final: a later look finds it settled
    finally:
        os.close(fd)


def _fail_if_abandoned(catalog: Catalog, request_id: int) -> bool:
    """`running` -> `failed` (only if still running); the caller holds its free lock."""
    return _set(catalog, request_id, RUNNING, status=FAILED, error=ABANDONED, finished_at=utcnow())


def fail_abandoned(settings: Settings, catalog: Catalog) -> list[int]:
    """Mark every `running` request whose lock is free `failed`; their ids (the sweeper's)."""
    with catalog.session() as s:
        running = list(s.scalars(select(RestoreRequest.id).where(RestoreRequest.status == RUNNING)))
    failed = []
    for request_id in running:
        with _running_lock(settings, request_id) as free:
            if free and _fail_if_abandoned(catalog, request_id):
                failed.append(request_id)
    return failed


def run(
    settings: Settings, catalog: Catalog, request_id: int, progress: ProgressFn = ignore
) -> dict[str, Any]:
    """The worker's side: claim the approved request, restore as the CLI does, record it. The
    lock is taken before the claim, so a `running` request always has a live holder or none."""
    with _running_lock(settings, request_id) as free:
        req = get(catalog, request_id)
        if not free:  # another worker runs it now (a duplicate delivery)
            return {"request": request_id, "status": req.status, "skipped": True}
        if not claim(catalog, request_id):
            if req.status == RUNNING and _fail_if_abandoned(catalog, request_id):
                return {"request": request_id, "status": FAILED, "error": ABANDONED}
            return {"request": request_id, "status": req.status, "skipped": True}
        return _run_claimed(settings, catalog, req, progress)


def _run_claimed(
    settings: Settings, catalog: Catalog, req: RestoreRequest, progress: ProgressFn
) -> dict[str, Any]:
    request_id = req.id
    action = "restore.json" if req.kind == guard.JSON else "restore.postgres"
    try:
        with audited(catalog, action, req.backup_id, initiator=req.requested_by) as entry:
            entry.backup_id = req.backup_id
            entry.detail.update(
                request=request_id, approved_by=req.approved_by, production=req.production,
                via="dashboard", target=req.target,
            )  # fmt: skip
            if req.kind == guard.JSON:
                entry.location, entry.size, files = _restore_json(settings, catalog, req, progress)
                entry.detail["files"] = files
            else:
                entry.location, entry.size = _restore_postgres(settings, catalog, req, progress)
    except Exception as exc:
        _finish(catalog, request_id, FAILED, str(exc)[:2000])
        raise
    _finish(catalog, request_id, SUCCEEDED, None)
    return {"request": request_id, "status": SUCCEEDED, "backup_id": req.backup_id}


def _restore_json(
    settings: Settings, catalog: Catalog, req: RestoreRequest, progress: ProgressFn
) -> tuple[str, int, int]:
    import socket

    from lifeos_backup.jobs.source import backup_source
    from lifeos_backup.kinds.json.restore import check_target, restore_archive

    target = Path(req.target)
    # Production is replaced file by file (the CLI's --force); anywhere else must be new or empty.
    check_target(target, req.production)
    with backup_source(req.backup_id, settings, catalog, "local", progress) as (archive, manifest):
        count = restore_archive(archive, manifest, target, req.production, progress)
    return f"{socket.gethostname()}:{target}", manifest.archive.size, count


def _restore_postgres(
    settings: Settings, catalog: Catalog, req: RestoreRequest, progress: ProgressFn
) -> tuple[str, int]:
    from lifeos_backup.jobs.source import backup_source
    from lifeos_backup.kinds.postgres.conninfo import restore_target
    from lifeos_backup.kinds.postgres.restore import RowCountMismatch, restore_postgres

    where = restore_target(settings, req.target).describe()
    with backup_source(req.backup_id, settings, catalog, "local", progress) as (archive, manifest):
        report = restore_postgres(
            archive, manifest, settings, req.target,
            create=not req.production, force=req.production, progress=progress,
        )  # fmt: skip
    if report.differences:
        raise RowCountMismatch(
            f"{len(report.differences)} of {len(report.counts)} restored tables differ from the "
            f"manifest of {req.backup_id}",
            hint="the restored database is not a faithful copy",
        )
    return where, manifest.archive.size
