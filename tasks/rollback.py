"""Tasks for working with the main app: rollback to JSON (wraps lifeos_backup.app.rollback).

To back up first, chain it after the JSON backup's verify step, which passes the verified
backup id on: `create -> verify -> lifeos.rollback.to_json`. The task then refuses to write
unless the catalog says that backup is verified. (It never waits for another task itself: a
worker blocking on a task that needs a worker slot can deadlock.)
"""

from __future__ import annotations

from typing import Any

from lifeos_backup.app.rollback import rollback_to_json
from workers.base import LifeosTask
from workers.celery_app import app

ROLLBACK_TO_JSON = "lifeos.rollback.to_json"


@app.task(bind=True, base=LifeosTask, name=ROLLBACK_TO_JSON)
def to_json(
    self: LifeosTask,
    backup_id: str | None = None,
    entity_types: list[str] | None = None,
    dry_run: bool = False,
    initiator: str = "operator",
) -> dict[str, Any]:
    """Export the app's entities to its JSON files; returns the per-entity-type report."""
    report = rollback_to_json(
        self.settings,
        self.catalog,
        entity_types=entity_types,
        dry_run=dry_run,
        backup_id=backup_id,
        actor=initiator,
    )
    return report.as_dict()
