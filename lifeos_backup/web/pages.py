"""What each page shows, read through the CLI's own functions (status, health, browse, audit).

Nothing here decides anything the command line decides differently: a kind's state is the
conditions `status` reports for it, a backup's location is `list`'s, its files are `ls`'s,
the audit chain's state is `audit verify`'s.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select

from lifeos_backup.core.errors import LifeosError
from lifeos_backup.core.names import LAYOUTS, PathPattern, check_backup_id
from lifeos_backup.core.settings import Settings
from lifeos_backup.monitoring.health import CRITICAL, DEGRADED, HEALTHY, RANK, max_age
from lifeos_backup.storage import audit
from lifeos_backup.storage.catalog import Backup, Catalog
from lifeos_backup.storage.catalog.models import Action, Drill, TaskRun
from lifeos_backup.storage.catalog.store import STATUSES, utcnow

LOCATIONS = ("local", "offsite", "both", "none")
MAX_FILES = 500  # entries of a JSON backup shown at once (a filter narrows the rest)
MAX_RECORDS = 300  # audit records shown at once


def overview(settings: Settings, catalog: Catalog) -> dict[str, Any]:
    """`status --json`, with each kind's own conditions and age limit beside it."""
    from lifeos_backup.monitoring.status import build_status

    report = build_status(settings, catalog)
    for card in report["kinds"]:
        kind = card["kind"]
        own = [c for c in report["conditions"] if c["kind"] == kind]
        card["conditions"] = own
        card["state"] = max((c["severity"] for c in own), key=RANK.__getitem__, default=HEALTHY)
        card["limit_s"] = max_age(settings, kind).total_seconds()
        lagging = [
            r for r in catalog.list(kind=kind, statuses=("verified",))
            if r.offsite_status != "uploaded"
        ]  # fmt: skip
        card["offsite_lagging"] = len(lagging)
    report["general"] = [c for c in report["conditions"] if not c["kind"]]
    report["banner"] = report["status"] in (DEGRADED, CRITICAL)
    return report


def backup_row(settings: Settings, row: Backup) -> dict[str, Any]:
    """The fields `lifeos-backup list --json` prints, for one row."""
    from lifeos_backup.storage.offsite.state import location

    return {
        "id": row.id,
        "kind": row.kind,
        "status": row.status,
        "location": location(row, settings.backup_root),
        "offsite_status": row.offsite_status,
        "created_at": row.created_at,
        "size": row.size,
        "duration_s": row.duration_s,
        "reason": row.reason,
        "initiator": row.initiator,
    }


@dataclass
class BackupFilter:
    kind: str = ""
    status: str = ""
    location: str = ""
    since: str = ""

    def checked(self) -> BackupFilter:
        """Unknown values are refused, not silently ignored (as the CLI's options)."""
        for value, allowed, what in (
            (self.kind, LAYOUTS, "kind"),
            (self.status, STATUSES, "status"),
            (self.location, LOCATIONS, "location"),
        ):
            if value and value not in allowed:
                raise LifeosError(f"{value!r} is not a {what}", hint=f"one of {', '.join(allowed)}")
        if self.since:
            audit.parse_since(self.since)
        return self


def backups(settings: Settings, catalog: Catalog, wanted: BackupFilter) -> list[dict[str, Any]]:
    since = audit.parse_since(wanted.since) if wanted.since else None
    rows = catalog.list(
        kind=wanted.kind or None, statuses=(wanted.status,) if wanted.status else None
    )
    shown = []
    for row in rows:
        if since is not None and row.created_at < since:
            break  # newest first
        item = backup_row(settings, row)
        if wanted.location and item["location"] != wanted.location:
            continue
        shown.append(item)
    return shown


def backup(settings: Settings, catalog: Catalog, backup_id: str) -> dict[str, Any]:
    """A backup's page: `show`'s record and manifest summary, its drills and audit records."""
    from lifeos_backup.formats.manifest import read_manifest
    from lifeos_backup.jobs.backups import locate

    check_backup_id(backup_id)
    row, archive, mpath = locate(settings, catalog, backup_id)
    page: dict[str, Any] = {"row": row, "info": backup_row(settings, row), "manifest": None}
    if mpath.exists():
        m = read_manifest(mpath)
        page["manifest"] = {
            "archive_sha256": m.archive.sha256,
            "archive_size": m.archive.size,
            "compression": f"{m.compression.algorithm} {m.compression.level}",
            "files": sum(1 for f in m.iter_files() if f.type == "file")
            if m.kind == "json"
            else None,
            "sources": [s.model_dump() for s in m.sources],
            "host": m.host,
            "tool_version": m.tool_version,
            "facts": m.facts,
        }
    page["archive_present"] = archive.exists()
    with catalog.session() as s:
        page["drills"] = list(
            s.scalars(select(Drill).where(Drill.backup_id == backup_id).order_by(Drill.id.desc()))
        )
        page["records"] = list(
            s.scalars(
                select(Action)
                .where(or_(Action.backup_id == backup_id, Action.target == backup_id))
                .order_by(Action.id)
            )
        )
    return page


_TYPE_BITS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}


def files(
    settings: Settings, catalog: Catalog, backup_id: str, path: str
) -> tuple[list[dict[str, Any]], bool]:
    """`ls ID [PATH]` of a JSON backup: entries from its manifest, at most MAX_FILES, and
    whether there were more. A hostile PATH (absolute, `..`) is refused by PathPattern."""
    from lifeos_backup.jobs import browse

    patterns = [PathPattern(path)] if path else []
    manifest = browse.local_manifest(settings, catalog, backup_id)
    if manifest.kind != "json":
        return [], False
    shown: list[dict[str, Any]] = []
    for entry in browse.matching(manifest.iter_files(), patterns):
        if len(shown) == MAX_FILES:
            return shown, True
        shown.append(
            {
                "mode": stat.filemode(_TYPE_BITS.get(entry.type, 0) | entry.mode),
                "size": entry.size,
                "mtime": None if entry.mtime is None else datetime.fromtimestamp(entry.mtime, UTC),
                "path": entry.path,
                "link": entry.linkname if entry.type == "symlink" else None,
            }
        )
    return shown, False


def running(settings: Settings, catalog: Catalog, app: Any | None) -> list[dict[str, Any]]:
    """Task runs in progress (the workers' own records), with the progress each last published
    (phase, bytes, files) when Redis answers."""
    recent = utcnow() - timedelta(seconds=settings.task_time_limit)
    query = (
        select(TaskRun)
        .where(
            TaskRun.state == "started", TaskRun.finished_at.is_(None), TaskRun.started_at >= recent
        )
        .order_by(TaskRun.started_at.desc())
    )
    with catalog.session() as s:
        runs = list(s.scalars(query))
    shown = []
    for run in runs:
        item: dict[str, Any] = {"run": run, "progress": None}
        if app is not None:
            try:
                from celery.result import AsyncResult

                result = AsyncResult(run.task_id, app=app)
                info = result.info  # one read: each asks the backend again
                if result.state == "PROGRESS" and isinstance(info, dict):
                    item["progress"] = info
            except Exception:  # noqa: S110 - Redis gone: the runs are still worth showing
                pass
        shown.append(item)
    return shown


def audit_page(
    catalog: Catalog, query: str, action: str, since: str
) -> tuple[list[dict[str, Any]], audit.Verification, int]:
    """`audit [--since] [--action]` newest first, narrowed by a text search, with `audit
    verify`'s result; also how many matched in all."""
    if action and action not in audit.action_filters():
        raise LifeosError(f"{action!r} is not an audit action")
    moment = audit.parse_since(since) if since else None
    rows = [audit.as_dict(r) for r in audit.records(catalog, since=moment, action=action or None)]
    needle = query.strip().lower()
    if needle:
        rows = [
            r for r in rows
            if needle in " ".join(
                str(r[k]) for k in ("initiator", "action", "target", "backup_id", "status",
                                    "location", "detail")
            ).lower()
        ]  # fmt: skip
    rows.reverse()
    return rows[:MAX_RECORDS], audit.verify(catalog), len(rows)


def age_text(seconds: float | None) -> str:
    from lifeos_backup.web.charts import human_seconds

    return "-" if seconds is None else human_seconds(seconds)


def when(moment: datetime | str | None) -> str:
    if moment is None:
        return "-"
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return f"{moment:%Y-%m-%d %H:%M:%S}"
