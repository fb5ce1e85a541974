"""The `postgres` backup kind: the glue between the shared backup lifecycle and this package.

Heavy imports (psycopg, the dump code) happen inside the methods, so registering the kind costs
nothing to processes that never back up PostgreSQL (Beat, the CLI's list command).
"""

from __future__ import annotations

from pathlib import Path

from lifeos_backup.core.progress import ProgressFn
from lifeos_backup.core.settings import Settings, get_settings
from lifeos_backup.formats.manifest import Manifest, Source
from lifeos_backup.kinds.base import Written

EXTENSION = ".dump.zst"


class PostgresKind:
    """Full backups of one PostgreSQL database (LIFEOS_DATABASE_URL or PG* variables)."""

    name = "postgres"

    def extension(self, settings: Settings) -> str:
        return EXTENSION + (".age" if settings.encryption_recipients else "")

    def write(self, settings: Settings, archive: Path, progress: ProgressFn) -> Written:
        from lifeos_backup.formats.crypto import encryption_info, parse_recipients
        from lifeos_backup.kinds.postgres.dump import ALGORITHM, dump_database

        result = dump_database(settings, archive, progress)
        source = Source(
            name=result.facts.database,
            path=result.source,
            files=len(result.facts.tables),
            bytes=result.facts.database_size,
        )
        return Written(
            size=result.size,
            sha256=result.sha256,
            algorithm=ALGORITHM,
            level=result.level,
            sources=[source],
            facts=result.manifest_facts(),
            encryption=encryption_info(parse_recipients(settings.encryption_recipients)),
        )

    def check(self, archive: Path, manifest: Manifest, progress: ProgressFn) -> None:
        from lifeos_backup.kinds.postgres.check import check_dump
        from lifeos_backup.kinds.postgres.tools import tool

        check_dump(archive, manifest, tool(get_settings(), "pg_restore"), progress)
