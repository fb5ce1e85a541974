"""Audit records of task runs, written by the workers' base task (workers/base.py) after each run.

One place records every backup, verify, upload, rotation and drill, whoever asked for it. The
initiator travels with the work: the `initiator` argument of `create` (the app, an operator's
user name, `health-check`), the `lifeos_initiator` message header that Beat's entries carry
(`beat`), or, for the later steps of a chain, the initiator stored on the backup by `create`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lifeos_backup.core.errors import NotFound
from lifeos_backup.core.settings import Settings
from lifeos_backup.jobs.routes import CREATE, ROTATE, UPLOAD, VERIFY
from lifeos_backup.storage import audit
from lifeos_backup.storage.catalog import Backup, Catalog

INITIATOR_HEADER = "lifeos_initiator"
AUDIT_ROTATE = "lifeos.audit.rotate"
# Task name -> audit action. Tasks not listed (the chain launcher, the health check) change
# nothing themselves; what they start is recorded by the tasks they start.
TASK_ACTIONS: dict[str, str] = {
    CREATE: "backup",
    VERIFY: "verify",
    UPLOAD: "upload",
    ROTATE: "rotate",
    "lifeos.drill.run": "drill",
    "lifeos.offsite.sync": "offsite.sync",
    "lifeos.pitr.wal_offsite": "wal.upload",
    AUDIT_ROTATE: "audit.rotate",
}
_BACKUP_STEPS = {"backup", "verify", "upload", "rotate"}
MAX_DETAIL = 4000  # characters of a task result kept in the record


@dataclass
class TaskRun:
    """One finished run of a task, as the worker saw it."""

    name: str
    task_id: str
    worker: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    status: str  # audit.SUCCEEDED / audit.FAILED
    seconds: float
    result: Any = None
    error: str | None = None
    header_initiator: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def _backup_id(run: TaskRun) -> str | None:
    if isinstance(run.result, str) and run.status == audit.SUCCEEDED:
        return run.result
    candidate = run.kwargs.get("backup_id") or (run.args[0] if run.args else None)
    return candidate if isinstance(candidate, str) and "_" in candidate else None


def _lookup(catalog: Catalog, backup_id: str | None) -> Backup | None:
    if not backup_id:
        return None
    try:
        return catalog.get(backup_id)
    except NotFound:
        return None


def _compact(value: Any) -> Any:
    """A task result small enough for a record (a long one is cut, as text)."""
    text = json.dumps(value, default=str)
    return value if len(text) <= MAX_DETAIL else text[:MAX_DETAIL] + "..."


def _is_noop(action: str, run: TaskRun, settings: Settings) -> bool:
    """Runs that did nothing: the upload step without a bucket, a WAL copy with nothing new."""
    if run.status != audit.SUCCEEDED:
        return False
    if action == "upload" and not settings.offsite_enabled:
        return True
    return action == "wal.upload" and not run.result


def _describe(
    action: str, run: TaskRun, backup: Backup | None, settings: Settings
) -> audit.AuditEntry:
    """Target, size, location and detail of the record for this run."""
    kind = run.kwargs.get("kind") or (run.args[0] if run.args else None)
    entry = audit.AuditEntry(target=str(kind or "all kinds"))
    if action in _BACKUP_STEPS and backup is not None:
        entry.target, entry.backup_id, entry.size = backup.id, backup.id, backup.size
        entry.location = audit.location_of(backup.host, settings.backup_root / backup.path)
        if action == "upload" and backup.offsite_key:
            entry.location = f"s3://{settings.s3_bucket}/{backup.offsite_key}"
        if action == "rotate":
            entry.target = backup.kind
    elif action == "drill":
        entry.target = str(run.kwargs.get("backup_id") or kind or "all kinds")
        if isinstance(run.result, list) and run.result:
            entry.target = ", ".join(str(r.get("backup_id")) for r in run.result)
            entry.location = ", ".join(str(r.get("report_dir")) for r in run.result)
    elif action in ("offsite.sync", "wal.upload"):
        entry.target = "off-site copies" if action == "offsite.sync" else "WAL archive"
        entry.location = f"s3://{settings.s3_bucket}/{settings.s3_prefix}"
    elif action == "audit.rotate":
        entry.target = "audit trail"
    if run.status == audit.SUCCEEDED and action not in ("backup", "verify", "upload"):
        entry.detail["result"] = _compact(run.result)
    return entry


def initiator_of(run: TaskRun, backup: Backup | None) -> str:
    """Who asked: the explicit argument, Beat's header, the backup's own initiator, else unknown."""
    explicit = run.kwargs.get("initiator")
    if explicit:
        return str(explicit)
    if run.header_initiator:
        return run.header_initiator
    if backup is not None and backup.initiator:
        return backup.initiator
    return "unknown"


def record_task_run(settings: Settings, catalog: Catalog, run: TaskRun) -> int | None:
    """Append the audit record of a finished task run; None for tasks that are not audited."""
    action = TASK_ACTIONS.get(run.name)
    if action is None or _is_noop(action, run, settings):
        return None
    backup = _lookup(catalog, _backup_id(run)) if action in _BACKUP_STEPS else None
    entry = _describe(action, run, backup, settings)
    entry.detail.update(run.detail, task_id=run.task_id, worker=run.worker)
    if run.error:
        entry.detail["error"] = run.error[:2000]
    return audit.append(
        catalog,
        action=action,
        target=entry.target,
        initiator=initiator_of(run, backup),
        status=run.status,
        size=entry.size,
        duration_s=run.seconds,
        location=entry.location,
        backup_id=entry.backup_id,
        detail=entry.detail,
    )
