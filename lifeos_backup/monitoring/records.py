"""Drill rows in the catalog: written by drills, read by health, status and metrics.

Kept apart from `drill` so that readers (the metrics endpoint, `status`) import no restore code.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from lifeos_backup.storage.catalog import Catalog
from lifeos_backup.storage.catalog.models import Drill
from lifeos_backup.storage.catalog.store import utcnow

RUNNING, PASSED, FAILED = "running", "passed", "failed"


def start(catalog: Catalog, kind: str, backup_id: str, started_at: datetime) -> int:
    """A `running` row; a worker killed mid-drill leaves it so until `fail_stale` runs."""
    with catalog.session() as s:
        row = Drill(
            kind=kind, backup_id=backup_id, status=RUNNING, started_at=started_at, details="{}"
        )
        s.add(row)
        s.flush()
        return row.id


def finish(
    catalog: Catalog,
    drill_id: int,
    *,
    status: str,
    finished_at: datetime,
    duration_s: float,
    restore_s: float | None,
    report_path: str | None,
    details: dict[str, Any],
    error: str | None,
) -> None:
    with catalog.session() as s:
        row = s.get(Drill, drill_id)
        if row is None:
            return
        row.status, row.finished_at, row.duration_s = status, finished_at, duration_s
        row.restore_s, row.report_path, row.error = restore_s, report_path, error
        row.details = json.dumps(details, sort_keys=True, default=str)


def fail_stale(catalog: Catalog, kind: str) -> list[int]:
    """Mark `running` drills of a kind failed; call only while holding that kind's drill lock."""
    with catalog.session() as s:
        rows = list(s.scalars(select(Drill).where(Drill.kind == kind, Drill.status == RUNNING)))
        for row in rows:
            row.status, row.finished_at = FAILED, utcnow()
            row.error = "interrupted: the drill's process stopped before it finished"
        return [row.id for row in rows]


def latest(catalog: Catalog) -> dict[str, Drill]:
    """The newest finished drill of every kind (running ones prove nothing yet)."""
    newest = (
        select(Drill.kind, func.max(Drill.id).label("id"))
        .where(Drill.status != RUNNING)
        .group_by(Drill.kind)
        .subquery()
    )
    query = select(Drill).join(newest, Drill.id == newest.c.id)
    with catalog.session() as s:
        return {row.kind: row for row in s.scalars(query)}


def history(catalog: Catalog, kind: str | None = None, limit: int = 20) -> list[Drill]:
    """Drills, newest first."""
    query = select(Drill).order_by(Drill.id.desc()).limit(limit)
    if kind:
        query = query.where(Drill.kind == kind)
    with catalog.session() as s:
        return list(s.scalars(query))


def details_of(row: Drill) -> dict[str, Any]:
    try:
        value = json.loads(row.details or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
