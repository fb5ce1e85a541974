"""Alembic `env.py` hook for the Life-OS app: no schema migration without a verified backup.

Copy this file next to the app's `env.py` (it needs only `lifeos_backup.app.client`, i.e. `celery`
and `redis`) and call it in `run_migrations_online()` after `context.configure(...)`:

    from alembic_env_hook import require_verified_backup

    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        require_verified_backup(context)          # raises MigrationRefused: nothing is migrated
        with context.begin_transaction():
            context.run_migrations()

It asks the lifeos-backup workers for a PostgreSQL backup and blocks until that backup is
*verified* (archive re-read and its table of contents checked); if the backup fails or is not
verified in time, it raises and Alembic exits non-zero before the first migration step runs.
`alembic upgrade head` with nothing to upgrade, `alembic current` and offline `--sql` runs take
no backup: they change nothing. docs/app-integration.md has the details.
"""

from __future__ import annotations

import logging
from typing import Any

from lifeos_backup.app.client import BackupFailed, make_app, request_backup

log = logging.getLogger("alembic.env.backup")


class MigrationRefused(RuntimeError):
    """The pre-migration backup did not end verified, so the migration must not run."""


def _as_set(revisions: Any) -> set[str]:
    if revisions is None:
        return set()
    if isinstance(revisions, str):
        return {revisions}
    return set(revisions)


def migration_pending(context: Any) -> bool:
    """Will this Alembic run change the schema? Unknown targets count as yes (back up)."""
    if context.is_offline_mode():
        return False  # --sql: SQL is printed, not applied; whoever applies it backs up first
    migration = context.get_context()  # configured: call this after context.configure()
    opts = migration.opts  # the command's options, e.g. destination_rev of upgrade/downgrade
    if opts.get("dont_mutate") or "destination_rev" not in opts:
        return False  # `alembic current`, `check`, ...: nothing is applied to the database
    current = _as_set(migration.get_current_heads())
    try:
        destination = _as_set(context.get_revision_argument())
    except Exception:  # relative or partial revision ids: let the migration decide, back up
        return True
    return destination != current


def require_verified_backup(
    context: Any,
    *,
    kind: str = "postgres",
    timeout: float = 3600,
    redis_url: str | None = None,
) -> str | None:
    """Block until a pre-migration backup is verified; its id (None: nothing to migrate).

    Raises MigrationRefused when the backup failed or was not verified within `timeout`.
    `redis_url` defaults to LIFEOS_REDIS_URL, else the embedded Redis of the `lifeos-backup up`
    serving the repository at LIFEOS_BACKUP_ROOT.
    """
    if not migration_pending(context):
        log.info("no migration to run: no pre-migration backup needed")
        return None
    current = ",".join(sorted(_as_set(context.get_context().get_current_heads()))) or "base"
    reason = f"pre-migration from {current}"
    log.info("requesting a %s backup (%s) and waiting until it is verified", kind, reason)
    try:
        app = make_app(redis_url)  # LIFEOS_REDIS_URL, else the repository's embedded Redis
        ref = request_backup(kind, reason, wait=True, timeout=timeout, app=app, initiator="alembic")
    except BackupFailed as exc:
        raise MigrationRefused(
            f"migration refused: the pre-migration {kind} backup was not verified: {exc}"
        ) from exc
    log.info("backup %s verified; migrating", ref.backup_id)
    return ref.backup_id
