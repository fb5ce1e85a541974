"""The audit trail's hash chain: how one record is appended, and how a record is hashed.

The one writer of the `actions` table, below both the catalog (`Catalog.record_action`) and the
audit trail's readers and recorders (lifeos_backup.storage.audit, which explains the chain).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.orm import Session

from lifeos_backup.core.fsutil import FILE_MODE
from lifeos_backup.storage.catalog.models import Action, AuditAnchor
from lifeos_backup.storage.catalog.schema import SUCCEEDED, iso, utcnow

GENESIS = "0" * 64  # the "previous hash" of the very first record
FORMAT_VERSION = 1  # part of every hashed document; bump only with a migration re-chaining
PG_LOCK_KEY = 0x4C69666541756474  # pg_advisory_xact_lock key of the chain ("LifeAudt")
HASHED = (
    "id", "at", "action", "target", "actor", "backup_id",
    "status", "size", "duration_s", "location", "detail",
)  # fmt: skip


class Chained(Protocol):
    """What `append` needs of a catalog (lifeos_backup.storage.catalog.store.Catalog)."""

    @property
    def file_path(self) -> Path | None: ...

    def session(self) -> AbstractContextManager[Session]: ...


def record_hash(fields: Mapping[str, Any], prev_hash: str) -> str:
    """SHA-256 (hex) of the canonical JSON of the record's fields and the previous hash.

    Canonical: sorted keys, no whitespace, UTF-8, times as UTC ISO strings with microseconds
    (what both SQLite and PostgreSQL store exactly), so the same record always hashes the same.
    """
    document: dict[str, Any] = {name: fields.get(name) for name in HASHED}
    if isinstance(document["at"], datetime):
        document["at"] = iso(document["at"])
    document["v"] = FORMAT_VERSION
    document["prev_hash"] = prev_hash
    payload = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def fields_of(row: Action) -> dict[str, Any]:
    """The hashed fields of a stored record."""
    return {name: getattr(row, name) for name in HASHED}


@contextmanager
def chain_lock(catalog: Chained) -> Iterator[None]:
    """Serialize appends across processes on an SQLite catalog (a file lock beside it).

    PostgreSQL catalogs take an advisory lock inside the transaction instead (`serialize_appends`);
    an in-memory SQLite database belongs to one process and needs nothing.
    """
    db = catalog.file_path  # the configured path: the same lock for every generation behind it
    if db is None:
        yield
        return
    fd = os.open(f"{db}.audit.lock", os.O_CREAT | os.O_WRONLY, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def serialize_appends(session: Session) -> None:
    """On PostgreSQL: hold the chain's advisory lock until this transaction ends."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})


def load_anchor(session: Session) -> AuditAnchor:
    anchor = session.get(AuditAnchor, 1)
    if anchor is None:  # only if someone deleted it; `verify` then reports the broken chain
        anchor = AuditAnchor(
            id=1, base_hash=GENESIS, base_id=0, removed=0, head_hash=GENESIS, head_id=0,
            updated_at=utcnow(),
        )  # fmt: skip
        session.add(anchor)
        session.flush()
    return anchor


def append(
    catalog: Chained,
    *,
    action: str,
    target: str,
    initiator: str,
    status: str = SUCCEEDED,
    size: int | None = None,
    duration_s: float | None = None,
    location: str | None = None,
    backup_id: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> int:
    """Append one record to the chain; returns its id. The only writer of the `actions` table."""
    with chain_lock(catalog), catalog.session() as s:
        serialize_appends(s)
        anchor = load_anchor(s)
        row = Action(
            at=utcnow(),
            action=action[:64],
            target=target,
            actor=(initiator or "unknown")[:128],
            backup_id=backup_id,
            detail=json.dumps(dict(detail or {}), sort_keys=True, default=str),
            status=status,
            size=size,
            duration_s=None if duration_s is None else round(duration_s, 3),
            location=location,
            prev_hash=anchor.head_hash,
        )
        s.add(row)
        s.flush()  # assigns the id, which is hashed too
        row.hash = record_hash(fields_of(row), anchor.head_hash)
        anchor.head_hash, anchor.head_id, anchor.updated_at = row.hash, row.id, row.at
        return row.id
