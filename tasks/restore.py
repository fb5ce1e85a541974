"""A restore asked for (and, over production, approved) in the dashboard: thin, like every task.

The request's id is the only argument; what to restore, where, and who approved it are read from
the catalog (lifeos_backup.web.restores), so a message cannot smuggle in another target.
"""

from __future__ import annotations

from typing import Any

from lifeos_backup.web import restores
from workers.base import LifeosTask
from workers.celery_app import app


@app.task(bind=True, base=LifeosTask, name=restores.RESTORE_TASK)
def run_restore(self: LifeosTask, request_id: int) -> dict[str, Any]:
    """Restore as approved; the request moves to running once, then succeeded or failed."""
    return restores.run(self.settings, self.catalog, request_id, self.reporter())
