"""The catalog: an SQL index of backups and task runs, rebuildable from the manifests."""

from lifeos_backup.storage.catalog.models import Action, Backup, TaskRun
from lifeos_backup.storage.catalog.store import Catalog, open_catalog

__all__ = ["Action", "Backup", "Catalog", "TaskRun", "open_catalog"]
