"""Restore drills and the health check (with the sweeper): thin tasks around monitoring."""

from __future__ import annotations

from typing import Any

from lifeos_backup.core.errors import AlreadyRunning
from lifeos_backup.monitoring import checkup, drill
from workers.base import LifeosTask
from workers.celery_app import app, sweep_now


@app.task(bind=True, base=LifeosTask, name=checkup.DRILL_TASK)
def run_drill(
    self: LifeosTask, kind: str | None = None, backup_id: str | None = None
) -> list[dict[str, Any]]:
    """Drill `backup_id`, or the newest verified backup of `kind`, or of every drillable kind.

    Results are recorded whatever they are; the task fails (red in Flower) if any drill failed.
    """
    if backup_id:
        kinds = [self.catalog.get(backup_id).kind]
    else:
        kinds = [kind] if kind else drill.kinds_to_drill(self.catalog)
    results = []
    for name in kinds:
        with self.exclusive(f"drill:{name}"):
            result = drill.run_drill(
                self.settings, self.catalog, name, backup_id, progress=self.reporter()
            )
        results.append(result.as_dict())
    failed = [r for r in results if r["status"] != "passed"]
    if failed:
        raise drill.DrillFailed(
            f"restore drill failed for {', '.join(r['backup_id'] for r in failed)}",
            "; ".join(str(r["error"]) for r in failed)[:2000],
            "see the drill reports under <backup root>/drills/ and `lifeos-backup status`",
        )
    return results


@app.task(bind=True, base=LifeosTask, name=checkup.HEALTH_TASK)
def health_check(self: LifeosTask) -> dict[str, Any]:
    """Sweep backups whose task is gone, evaluate health, request catch-up backups, send
    alerts; one check at a time."""
    try:
        with self.exclusive("health"):
            swept = sweep_now(self.redis)
            report = checkup.run_health_check(
                self.settings,
                self.catalog,
                self.redis,
                lambda kind, reason: checkup.request_catch_up(self.app, kind, reason),
            )
    except AlreadyRunning:
        return {"status": "skipped", "reason": "another health check is running"}
    report["swept"] = [{"id": s.backup_id, "failed": s.failed, "removed": s.removed} for s in swept]
    return report
