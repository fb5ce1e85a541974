"""What an audit record says and how records are asked for, without SQLAlchemy.

The actions the trail knows, `--since` and `--action` as `lifeos-backup audit` and the dashboard
accept them, and a record's JSON form. They live apart from lifeos_backup.storage.audit (which
writes, verifies and rotates the trail through the ORM) so that `lifeos-backup audit` lists
records through lifeos_backup.storage.catalog.view without importing it; that module exports
these names too.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from lifeos_backup.core.errors import ConfigError
from lifeos_backup.storage.catalog.schema import FAILED_ACTION as FAILED
from lifeos_backup.storage.catalog.schema import SUCCEEDED, iso, utcnow

if TYPE_CHECKING:
    from lifeos_backup.storage.catalog.models import Action
    from lifeos_backup.storage.catalog.view import ActionRow

__all__ = ["ACTIONS", "FAILED", "SUCCEEDED", "action_filters", "as_dict", "parse_since"]

# Every action the trail records, whoever records it (workers: lifeos_backup.jobs.audit_tasks; the
# CLI: `audited`; flag changes, rollbacks and entity restores: Catalog.record_action).
# `audit --action` accepts these and their groups (`restore` for restore.*); a unit test checks
# that every action written anywhere in the code is listed here.
ACTIONS = (
    "audit.rotate",
    "backup",
    "catalog.rebuild",
    "dashboard.login",
    "dashboard.logout",
    "dashboard.request",
    "drill",
    "entity.restore",
    "flag.set",
    "flag.set_user",
    "flag.unset_user",
    "forget",
    "offsite.sync",
    "restore.approve",
    "restore.json",
    "restore.pitr",
    "restore.postgres",
    "restore.reject",
    "restore.request",
    "rollback.to_json",
    "rotate",
    "upload",
    "user.add",
    "user.remove",
    "verify",
    "wal.upload",
)


def action_filters() -> list[str]:
    """What `audit --action` accepts: every action, and every group of dotted actions."""
    groups = {action.split(".")[0] for action in ACTIONS if "." in action}
    return sorted(set(ACTIONS) | groups)


_RELATIVE = re.compile(r"(\d+)\s*([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """`7d`, `24h`, `30m`, `2w` ago, or an ISO date/time (UTC unless it says otherwise)."""
    value = value.strip()
    match = _RELATIVE.fullmatch(value)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        try:
            return (now or utcnow()) - timedelta(**{_UNITS[unit]: amount})
        except OverflowError:  # more days than a date can go back
            raise ConfigError(
                f"--since {value!r} reaches back before the year 1",
                hint="use a shorter duration (7d, 24h, 30m, 2w) or a date",
            ) from None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"--since {value!r} is neither a duration nor a date",
            hint="use e.g. 7d, 24h, 30m, 2w, 2026-11-01 or 2026-11-01T12:00:00+00:00",
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def as_dict(row: Action | ActionRow) -> dict[str, Any]:
    """A record for `audit --json`; `initiator` is the stored `actor`."""
    try:
        detail = json.loads(row.detail or "{}")
    except ValueError:
        detail = row.detail
    return {
        "id": row.id,
        "at": iso(row.at),
        "initiator": row.actor,
        "action": row.action,
        "target": row.target,
        "backup_id": row.backup_id,
        "status": row.status,
        "size": row.size,
        "duration_s": row.duration_s,
        "location": row.location,
        "detail": detail,
        "hash": row.hash,
        "prev_hash": row.prev_hash,
    }
