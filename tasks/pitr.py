"""Point-in-time recovery tasks: the off-site copy of the WAL archive (Beat, every minute).

Base backups themselves run through the ordinary chain (`lifeos.backup.start` with "basebackup").
"""

from __future__ import annotations

from lifeos_backup.core.errors import AlreadyRunning, LifeosError
from workers.base import LifeosTask
from workers.celery_app import app

WAL_OFFSITE = "lifeos.pitr.wal_offsite"


@app.task(bind=True, base=LifeosTask, name=WAL_OFFSITE)
def wal_offsite(self: LifeosTask) -> list[str]:
    """Upload archived WAL files each off-site target lacks, then prune remote WAL no kept base
    backup needs; a no-op without targets. Returns the names uploaded. A target that fails
    holds back neither the others nor the pruning; the run fails afterwards, naming it."""
    if not self.settings.offsite_enabled:
        return []
    from lifeos_backup.kinds.basebackup.offsite_wal import prune_remote_wal, upload_wal

    try:
        with self.exclusive("wal-offsite"):
            try:
                sent = upload_wal(self.settings)
            except LifeosError:
                prune_remote_wal(self.settings, self.catalog)
                raise
            prune_remote_wal(self.settings, self.catalog)
            return sent
    except AlreadyRunning:
        return []  # the previous run is still copying; the next one picks up the rest
