"""The tiny client the main app uses: request a backup and, if asked, wait until it is verified.

Importable with only `celery` (and `redis`) installed: tasks are sent by name, nothing else of
lifeos-backup is imported. The CLI and Beat build their chains here too, so there is one pipeline.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery, chain, signature
from celery.result import AsyncResult

CREATE = "lifeos.backup.create"
VERIFY = "lifeos.backup.verify"
UPLOAD = "lifeos.backup.upload"
ROTATE = "lifeos.backup.rotate"

# Queues (docs/operations.md): dumps, uploads, drills and maintenance each have their own workers,
# so an upload never waits behind a long dump. Routing happens where a task is sent, so this
# client carries the table too; the workers' app uses the same one (workers/celery_app.py).
DUMPS, UPLOADS, DRILLS, MAINTENANCE = "dumps", "uploads", "drills", "maintenance"
QUEUES = (DUMPS, UPLOADS, DRILLS, MAINTENANCE)
TASK_ROUTES: dict[str, dict[str, str]] = {
    CREATE: {"queue": DUMPS},
    VERIFY: {"queue": MAINTENANCE},
    UPLOAD: {"queue": UPLOADS},
    ROTATE: {"queue": MAINTENANCE},
    "lifeos.backup.start": {"queue": MAINTENANCE},
    "lifeos.offsite.sync": {"queue": UPLOADS},
    "lifeos.pitr.wal_offsite": {"queue": UPLOADS},
    "lifeos.drill.run": {"queue": DRILLS},
    "lifeos.health.check": {"queue": MAINTENANCE},
    "lifeos.rollback.to_json": {"queue": MAINTENANCE},
    "lifeos.audit.rotate": {"queue": MAINTENANCE},
}


class BackupFailed(Exception):
    """The requested backup did not end verified; the message says which step failed and why."""


class BackupTimeout(BackupFailed):
    """The wait ran out; the backup may still finish (look it up with `lifeos-backup list`)."""


@dataclass
class BackupRef:
    """Handles of one requested backup chain; `backup_id` is known once `create` finished."""

    kind: str
    create_task_id: str
    verify_task_id: str
    rotate_task_id: str
    backup_id: str | None = None
    upload_task_id: str = ""  # off-site copy; a quiet no-op when no bucket is configured


def make_app(redis_url: str | None = None) -> Celery:
    """A Celery app that only sends tasks and reads results, with the workers' serializer."""
    url = redis_url or os.environ.get("LIFEOS_REDIS_URL") or "redis://127.0.0.1:6379/0"
    app = Celery("lifeos-client", broker=url, backend=url, set_as_current=False)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    app.conf.update(task_routes=TASK_ROUTES, task_default_queue=MAINTENANCE)
    return app


def backup_chain(
    app: Celery, kind: str, reason: str = "", initiator: str = "app"
) -> tuple[Any, BackupRef]:
    """create -> verify -> upload -> rotate, with task ids fixed up front so callers can follow
    each step. Waiting callers return at verify: the off-site copy follows on its own."""
    ref = BackupRef(kind, str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()))
    ref.upload_task_id = str(uuid.uuid4())
    steps = chain(
        signature(
            CREATE, args=(kind,), kwargs={"reason": reason, "initiator": initiator}, app=app
        ).set(task_id=ref.create_task_id),
        signature(VERIFY, app=app).set(task_id=ref.verify_task_id),
        signature(UPLOAD, app=app).set(task_id=ref.upload_task_id),
        signature(ROTATE, app=app).set(task_id=ref.rotate_task_id),
    )
    return steps, ref


def request_backup(
    kind: str,
    reason: str = "",
    *,
    wait: bool = False,
    timeout: float = 3600,
    app: Celery | None = None,
    initiator: str = "app",
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> BackupRef:
    """Enqueue a backup; with wait=True return only once it is verified, else raise BackupFailed."""
    app = app or make_app()
    steps, ref = backup_chain(app, kind, reason, initiator)
    steps.apply_async()
    if wait:
        ref.backup_id = wait_verified(app, ref, timeout, on_progress)
    return ref


def failure_text(exc: object) -> str:
    """A failed task's exception as one readable line.

    Celery rebuilds a task's exception from its class name and arguments; when this process has
    not imported that class (the app and the CLI never import lifeos_backup.postgres.connect,
    say), it makes a stand-in Exception with the same arguments. A LifeosError's arguments are
    (what, detail, hint), which the stand-in would print as a Python tuple; they are put back
    together here the way LifeosError prints them (lifeos_backup.errors).
    """
    args = getattr(exc, "args", ())
    plain = type(exc).__str__ is BaseException.__str__  # LifeosError has its own __str__
    if plain and len(args) == 3 and all(isinstance(a, str) for a in args):
        what, detail, hint = args
        return what + (f": {detail}" if detail else "") + (f" (hint: {hint})" if hint else "")
    return str(exc)


def _step_result(app: Celery, task_id: str, step: str, on_progress: Any) -> Any | None:
    result = AsyncResult(task_id, app=app)
    state = result.state
    if state == "FAILURE":
        raise BackupFailed(f"backup {step} failed: {failure_text(result.result)}")
    if state == "REVOKED":
        raise BackupFailed(f"backup {step} was revoked")
    if state == "PROGRESS" and on_progress and isinstance(result.info, dict):
        on_progress(result.info)
    return result.result if state == "SUCCESS" else None


def wait_verified(
    app: Celery,
    ref: BackupRef,
    timeout: float = 3600,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    poll: float = 0.25,
) -> str:
    """Block until the chain's verify step succeeded; returns the backup id."""
    deadline = time.monotonic() + timeout
    backup_id: str | None = None
    while time.monotonic() < deadline:
        if backup_id is None:
            backup_id = _step_result(app, ref.create_task_id, "create", on_progress)
            ref.backup_id = backup_id
        if backup_id is not None and _step_result(app, ref.verify_task_id, "verify", None):
            return backup_id
        time.sleep(poll)
    raise BackupTimeout(
        f"backup {backup_id or '(not started)'} was not verified within {timeout:.0f}s",
    )
