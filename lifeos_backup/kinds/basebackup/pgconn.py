"""Connecting for base backups: reuses lifeos_backup.kinds.postgres (password kept out of argv).

`PgTarget` splits the password off LIFEOS_DATABASE_URL (or libpq's PG* variables), so
`pg_basebackup -d CONNINFO` never shows it to `ps`: it travels in PGPASSWORD, which procs.spawn
redacts from errors. Server programs are picked to match the server's major version, because
pg_basebackup refuses a server of another major version and pg_ctl must match the data directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg

from lifeos_backup.core.errors import ConfigError
from lifeos_backup.core.settings import Settings
from lifeos_backup.kinds.postgres.connect import connect as pg_connect
from lifeos_backup.kinds.postgres.conninfo import PgTarget


def target(settings: Settings) -> PgTarget:
    return PgTarget.from_settings(settings)


def conninfo_and_env(settings: Settings) -> tuple[str, dict[str, str]]:
    """A conninfo string safe for argv, and the environment carrying the password."""
    source = target(settings)
    return source.conninfo(), source.env()


def connect(settings: Settings) -> psycopg.Connection[tuple[object, ...]]:
    """Autocommit connection; failures classified (unreachable retryable, bad login permanent)."""
    return pg_connect(target(settings), autocommit=True)


def pg_tool(settings: Settings, program: str, major: int | None = None) -> str:
    """A PostgreSQL program: LIFEOS_PG_BIN_DIR, else the Debian folder of the server's major
    version (server programs such as pg_ctl are not on PATH there), else PATH."""
    candidates = [settings.pg_bin_dir] if settings.pg_bin_dir else []
    if major is not None:
        candidates.append(Path(f"/usr/lib/postgresql/{major}/bin"))
    for folder in candidates:
        if (folder / program).is_file():
            return str(folder / program)
    found = shutil.which(program)
    if found is None:
        raise ConfigError(
            f"{program} not found",
            f"not in {', '.join(map(str, candidates)) or 'LIFEOS_PG_BIN_DIR'} nor on PATH",
            "install the PostgreSQL packages of the server's major version, or set "
            "LIFEOS_PG_BIN_DIR",
        )
    return found
