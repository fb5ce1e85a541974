"""Task names, queues and routes: how a task is sent, by name, to the workers that run it.

The tasks (tasks/), the workers' Celery app (workers/celery_app.py, lifeos_backup.jobs.queues)
and the app's client (lifeos_backup.app.client) all use these, so there is one table. Nothing is
imported here: the client stays importable with only celery and redis installed.
"""

from __future__ import annotations

CREATE = "lifeos.backup.create"
VERIFY = "lifeos.backup.verify"
UPLOAD = "lifeos.backup.upload"
ROTATE = "lifeos.backup.rotate"

# Queues (docs/operations.md): dumps, uploads, drills and maintenance each have their own workers,
# so an upload never waits behind a long dump. Routing happens where a task is sent, so the
# client carries the table too; the workers' app uses the same one (workers/celery_app.py).
DUMPS, UPLOADS, DRILLS, MAINTENANCE = "dumps", "uploads", "drills", "maintenance"
QUEUES = (DUMPS, UPLOADS, DRILLS, MAINTENANCE)
# Beat's schedule and lock in Redis (RedBeat): the lock key is REDBEAT_LOCK_KEY while a Beat runs.
REDBEAT_PREFIX = "lifeos:redbeat"
REDBEAT_LOCK_KEY = REDBEAT_PREFIX + ":lock"
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
    "lifeos.restore.run": {"queue": MAINTENANCE},
}
