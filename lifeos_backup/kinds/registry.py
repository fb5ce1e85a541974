"""The backup kinds by name: what `backup json|postgres|basebackup` and the lifecycle look up.

Everything the kinds share (ids, catalog, manifest, locks, retention) is in
lifeos_backup.jobs.backups; what a kind is, in lifeos_backup.kinds.base.
"""

from __future__ import annotations

from lifeos_backup.core.names import layout
from lifeos_backup.kinds.base import Kind
from lifeos_backup.kinds.basebackup.kind import BaseBackupKind
from lifeos_backup.kinds.json.kind import JsonKind
from lifeos_backup.kinds.postgres.kind import PostgresKind

KINDS: dict[str, Kind] = {
    "json": JsonKind(),
    "postgres": PostgresKind(),
    "basebackup": BaseBackupKind(),
}


def get_kind(name: str) -> Kind:
    """The kind called `name` (ConfigError naming the kinds for any other name)."""
    layout(name)  # the repository's kinds and their error for an unknown one
    return KINDS[name]
