"""Which restore targets are production: the one rule the CLI and the dashboard both ask.

A restore into production overwrites what the app runs on: the database of LIFEOS_DATABASE_URL,
or the app folder (LIFEOS_APP_DIR). The CLI asks for `--i-know-this-is-production` (or the name
typed again), the dashboard for a second admin's approval (lifeos_backup.web.restores).
"""

from __future__ import annotations

import os
from pathlib import Path

from lifeos_backup.core.settings import Settings

JSON, POSTGRES = "json", "postgres"


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def production_folder(settings: Settings, target: Path) -> bool:
    """A JSON restore into `target` writes over the app folder: it is the app folder, lies
    inside it, or holds it."""
    app = settings.app_dir.resolve()
    there = target.expanduser().resolve()
    return _inside(there, app) or _inside(app, there)


def _where(params: dict[str, str]) -> tuple[str, str, str]:
    """(host, port, dbname) as libpq would pick them, for comparing two targets."""
    host = params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or ""
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    dbname = params.get("dbname") or os.environ.get("PGDATABASE") or params.get("user") or ""
    return host, port, dbname


def production_database(settings: Settings, database: str, server: str | None = None) -> bool:
    """A PostgreSQL restore into `database` (a name, or a URL; on `server`) writes over the
    database the backups are taken of."""
    from lifeos_backup.kinds.postgres.conninfo import PgTarget, postgres_configured, restore_target

    if not postgres_configured(settings):
        return False
    production = PgTarget.from_settings(settings)
    target = restore_target(settings, database, server)
    return _where(dict(target.params)) == _where(dict(production.params))


def production_name(settings: Settings) -> str | None:
    """The production database's name (what the CLI asks to be typed again), if one is set."""
    from lifeos_backup.kinds.postgres.conninfo import PgTarget, postgres_configured

    if not postgres_configured(settings):
        return None
    return _where(dict(PgTarget.from_settings(settings).params))[2] or None


def is_production(settings: Settings, kind: str, target: str) -> bool:
    """The rule for either kind: `target` is a folder (json) or a database (postgres)."""
    if kind == JSON:
        return production_folder(settings, Path(target))
    if kind == POSTGRES:
        return production_database(settings, target)
    return False
