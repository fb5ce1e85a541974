"""A PostgreSQL backup's schema objects by type and name, from its table of contents.

`diff` compares two backups by them: indexes, constraints, functions, types, domains, views,
triggers, extensions and the rest that pg_dump records, added or removed by name (a changed
definition under the same name is not seen). Only part 0's head is read (tochead.py: the
archive's header and table of contents, streamed from the start of the archive and decrypted only
that far), never the dump's data. Tables, schemas and sequences are left to the manifest's facts,
which also hold their row counts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from lifeos_backup.core.errors import PermanentError
from lifeos_backup.core.fsutil import FILE_MODE, private_dir
from lifeos_backup.core.settings import Settings
from lifeos_backup.formats.manifest import Manifest
from lifeos_backup.kinds.postgres.parts import open_first_part
from lifeos_backup.kinds.postgres.toc import TocEntry, list_toc
from lifeos_backup.kinds.postgres.tochead import copy_head
from lifeos_backup.kinds.postgres.tools import tool

# Entries that are no object of their own (data, session set-up, privileges, notes), or that the
# manifest's facts already compare (tables, schemas, sequences).
NOT_OBJECTS = frozenset(
    {
        "ACL", "BLOB", "BLOB METADATA", "BLOBS", "COMMENT", "DATABASE", "DATABASE PROPERTIES",
        "DEFAULT ACL", "ENCODING", "LARGE OBJECT", "MATERIALIZED VIEW DATA", "SCHEMA",
        "SEARCHPATH", "SECURITY LABEL", "SEQUENCE", "SEQUENCE OWNED BY", "SEQUENCE SET",
        "STDSTRINGS", "TABLE", "TABLE DATA",
    }
)
# Entries named `table name` in their table's schema: shown as `name on schema.table`.
ON_TABLE = frozenset(
    {"CHECK CONSTRAINT", "CONSTRAINT", "DEFAULT", "FK CONSTRAINT", "POLICY", "RULE", "TRIGGER"}
)


class HeadUnreadable(PermanentError):
    """The archive's table of contents could not be cut out of part 0."""


@dataclass(frozen=True, order=True)
class SchemaObject:
    """One object: its type as pg_dump names it, lower case, and its name (`public.touch()`,
    `characters_pkey on public.characters`, `citext` for an extension)."""

    type: str
    name: str

    def __str__(self) -> str:
        return f"{self.type} {self.name}"

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name}


def schema_object(entry: TocEntry) -> SchemaObject | None:
    """The object an entry creates; None for data, privileges, comments and the like."""
    if entry.desc in NOT_OBJECTS:
        return None
    tag, schema = entry.tag, entry.schema
    if entry.desc in ON_TABLE and " " in tag:
        table, name = tag.split(" ", 1)
        return SchemaObject(entry.desc.lower(), f"{name} on {schema}.{table}")
    return SchemaObject(entry.desc.lower(), tag if schema == "-" else f"{schema}.{tag}")


def schema_objects(entries: Iterable[TocEntry]) -> set[SchemaObject]:
    return {found for entry in entries if (found := schema_object(entry)) is not None}


def compare(
    old: set[SchemaObject], new: set[SchemaObject]
) -> tuple[list[SchemaObject], list[SchemaObject]]:
    """(added, removed) from `old` to `new`, each sorted by type and name."""
    return sorted(new - old), sorted(old - new)


def archive_objects(archive: Path, manifest: Manifest, settings: Settings) -> set[SchemaObject]:
    """The schema objects of a PostgreSQL backup, from the head of its part 0 (for an encrypted
    archive with the identity in LIFEOS_ENCRYPTION_IDENTITY_FILE)."""
    pg_restore = tool(settings, "pg_restore")
    scratch = Path(tempfile.mkdtemp(prefix="diff-", dir=private_dir(settings.state_dir)))
    head = scratch / "head.dump"
    try:
        fd = os.open(head, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            with (
                os.fdopen(fd, "wb") as out,
                open_first_part(archive, manifest, settings.encryption_identity_file) as stream,
            ):
                known = copy_head(stream, out, whole_if_unknown=False)
        except (zstandard.ZstdError, EOFError) as exc:
            raise HeadUnreadable(
                f"part 0 of {manifest.backup_id} does not decompress",
                f"{type(exc).__name__}: {exc}",
            ) from exc
        if not known:
            raise HeadUnreadable(
                f"the table of contents of {manifest.backup_id} is in a layout not known here",
                f"pg_dump {manifest.facts.get('pg_dump_version', '?')}",
            )
        return schema_objects(list_toc(pg_restore, head))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
