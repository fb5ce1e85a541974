"""Health of the WAL archive: how old the newest archived segment is, and failed pushes.

The recovery point objective in practice: if the database died now, everything after the newest
archived segment would be lost. So `age_seconds` (time since that segment was archived) is the
number to alert on; with archive_timeout = 60 it stays near a minute on a healthy system, even
when the database is idle (PostgreSQL then switches segments only when something was written,
so a quiet database can look older: compare with `last_push.at`).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from lifeos_backup.core.settings import Settings
from lifeos_backup.kinds.basebackup import wal_archive_dir
from lifeos_backup.wal.archive import SUFFIX, read_status
from lifeos_backup.wal.names import SEGMENT, is_history


def wal_archive_status(settings: Settings, now: datetime | None = None) -> dict[str, Any]:
    """A plain dict for the health check and `status`: counts, newest segment, its age, failures,
    and (with a bucket) the off-site lag.

    Reads only the folder listing, `.wal-status.json` and the uploads' record; never decompresses
    anything.
    """
    archive = wal_archive_dir(settings)
    now = now or datetime.now(UTC)
    result: dict[str, Any] = {
        "archive_dir": str(archive),
        "exists": archive.is_dir(),
        "segments": 0,
        "history_files": 0,
        "bytes": 0,
        "oldest_segment": None,
        "newest_segment": None,
        "newest_archived_at": None,
        "age_seconds": None,
        "failures_total": 0,
        "consecutive_failures": 0,
        "last_failure": None,
        "last_push": None,
    }
    if not result["exists"]:
        return result
    segments: list[tuple[str, float]] = []
    for entry in os.scandir(archive):
        if not entry.name.endswith(SUFFIX) or entry.name.startswith("."):
            continue
        name = entry.name.removesuffix(SUFFIX)
        stat = entry.stat()
        result["bytes"] += stat.st_size
        if SEGMENT.match(name):
            segments.append((name, stat.st_mtime))
        elif is_history(name):
            result["history_files"] += 1
    if segments:
        result["segments"] = len(segments)
        result["oldest_segment"] = min(name for name, _ in segments)
        newest = max(segments, key=lambda item: (item[0][8:], item[0][:8]))[0]
        newest_time = max(m for _, m in segments)  # the latest archived, whatever its name
        result["newest_segment"] = newest
        result["newest_archived_at"] = datetime.fromtimestamp(newest_time, UTC).isoformat()
        result["age_seconds"] = round(max(0.0, now.timestamp() - newest_time), 1)
    status = read_status(archive)
    result["failures_total"] = int(status.get("failures_total", 0))
    result["consecutive_failures"] = int(status.get("consecutive_failures", 0))
    result["last_failure"] = status.get("last_failure")
    result["last_push"] = status.get("last_push")
    if settings.offsite_enabled:
        from lifeos_backup.kinds.basebackup.offsite_wal import offsite_lag

        result["offsite"] = offsite_lag(settings, now.timestamp())
    return result
