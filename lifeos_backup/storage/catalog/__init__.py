"""The catalog: an SQL index of backups and task runs, rebuildable from the manifests.

The names below load their modules (and SQLAlchemy) when first asked for, so that importing a
light submodule (`schema`, `generations`, `view`) does not pay for the ORM.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lifeos_backup.storage.catalog.models import Action, Backup, TaskRun
    from lifeos_backup.storage.catalog.store import Catalog, open_catalog

__all__ = ["Action", "Backup", "Catalog", "TaskRun", "open_catalog"]
_HOMES = {
    "Action": "models",
    "Backup": "models",
    "TaskRun": "models",
    "Catalog": "store",
    "open_catalog": "store",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
