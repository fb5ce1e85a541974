"""Rotation of the audit trail (Beat, daily): records older than the retention go, the chain
stays verifiable from its anchor (lifeos_backup.storage.audit.rotate)."""

from __future__ import annotations

from typing import Any

from lifeos_backup.jobs.audit_tasks import AUDIT_ROTATE
from lifeos_backup.storage import audit
from workers.base import LifeosTask
from workers.celery_app import app


@app.task(bind=True, base=LifeosTask, name=AUDIT_ROTATE)
def rotate_audit(self: LifeosTask) -> dict[str, Any]:
    """Remove audit records older than LIFEOS_AUDIT_RETENTION_DAYS; returns how many went."""
    days = self.settings.audit_retention_days
    return {"removed": audit.rotate(self.catalog, days), "retention_days": days}
