"""The series behind the trend charts, from the catalog and the audit trail.

Per kind, over the last DAYS days: each good backup's size and creation time (rows that rotation
deleted since count too: the catalog keeps them), the recovery point sampled every SAMPLE hours
(how old the newest good backup was at that moment: what a disaster then would have lost), and
the restore time each passed drill measured. Repository usage is the size of the backups present
at each day's end: created by then and not yet deleted; when a backup was deleted is read from
the audit records of rotations and `forget`, and a deleted backup whose deletion has left the
trail (audit retention) is left out, so the line is a lower bound. Off-site usage likewise, from
the time each copy was uploaded.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select

from lifeos_backup.monitoring import records
from lifeos_backup.monitoring.health import good_history
from lifeos_backup.storage.catalog import Backup, Catalog
from lifeos_backup.storage.catalog.models import Action
from lifeos_backup.storage.catalog.store import DELETED, utcnow

DAYS = 90
SAMPLE = timedelta(hours=6)
Point = tuple[datetime, float]


@dataclass
class Trends:
    start: datetime
    end: datetime
    size: dict[str, list[Point]] = field(default_factory=dict)
    duration: dict[str, list[Point]] = field(default_factory=dict)
    rpo: dict[str, list[Point]] = field(default_factory=dict)
    rto: dict[str, list[Point]] = field(default_factory=dict)
    usage: dict[str, list[Point]] = field(default_factory=dict)


def _deleted_at(catalog: Catalog, since: datetime) -> dict[str, datetime]:
    """When each backup was deleted, from the rotation and forget records."""
    found: dict[str, datetime] = {}
    query = select(Action).where(
        or_(Action.action == "rotate", Action.action == "forget"), Action.at >= since
    )
    with catalog.session() as s:
        rows = list(s.scalars(query.order_by(Action.id)))
    for row in rows:
        if row.action == "forget":
            found.setdefault(row.target, row.at)
            continue
        try:
            detail: Any = json.loads(row.detail or "{}")
        except ValueError:
            continue
        ids: list[Any] = list(detail.get("deleted") or [])  # the CLI's record
        result = detail.get("result")  # the task's: {kind: [ids]}
        if isinstance(result, dict):
            ids += [i for value in result.values() if isinstance(value, list) for i in value]
        for backup_id in ids:
            if isinstance(backup_id, str):
                found.setdefault(backup_id, row.at)
    return found


def _rpo(good: list[Backup], start: datetime, end: datetime) -> list[Point]:
    """Hours since the newest good backup, every SAMPLE from `start` to `end`."""
    times = sorted(r.created_at for r in good)
    points: list[Point] = []
    moment = start
    while moment <= end:
        index = bisect.bisect_right(times, moment)
        if index:
            points.append((moment, (moment - times[index - 1]).total_seconds()))
        moment += SAMPLE
    return points


def _alive(spans: list[tuple[datetime, datetime | None, int]], moment: datetime) -> float:
    return float(
        sum(
            size for born, gone, size in spans if born <= moment and (gone is None or gone > moment)
        )
    )


def build(catalog: Catalog, kinds: list[str], now: datetime | None = None) -> Trends:
    end = now or utcnow()
    start = end - timedelta(days=DAYS)
    trends = Trends(start, end)
    for kind in kinds:
        good = [
            r for r in good_history(catalog, kind) if r.created_at >= start - timedelta(days=30)
        ]
        shown = sorted((r for r in good if r.created_at >= start), key=lambda r: r.created_at)
        trends.size[kind] = [(r.created_at, float(r.size or 0)) for r in shown]
        trends.duration[kind] = [
            (r.created_at, float(r.duration_s)) for r in shown if r.duration_s is not None
        ]
        trends.rpo[kind] = _rpo(good, start, end)
        drills = [
            d for d in records.history(catalog, kind, 1000)
            if d.status == records.PASSED and d.restore_s is not None and d.started_at >= start
        ]  # fmt: skip
        trends.rto[kind] = sorted((d.started_at, float(d.restore_s or 0)) for d in drills)
    _usage(catalog, trends)
    return trends


def _usage(catalog: Catalog, trends: Trends) -> None:
    deleted = _deleted_at(catalog, trends.start - timedelta(days=DAYS))
    local: list[tuple[datetime, datetime | None, int]] = []
    remote: list[tuple[datetime, datetime | None, int]] = []
    for row in catalog.list():
        if row.size is None:
            continue
        if row.status != DELETED:
            local.append((row.created_at, None, row.size))
        elif row.id in deleted:
            local.append((row.created_at, deleted[row.id], row.size))
        if row.offsite_uploaded_at is not None:
            gone = row.offsite_checked_at if row.offsite_status == "deleted" else None
            remote.append((row.offsite_uploaded_at, gone, row.size))
    days = [trends.start + timedelta(days=n) for n in range(DAYS + 1)] + [trends.end]
    trends.usage["repository"] = [(d, _alive(local, d)) for d in days]
    if remote:
        trends.usage["off-site"] = [(d, _alive(remote, d)) for d in days]
