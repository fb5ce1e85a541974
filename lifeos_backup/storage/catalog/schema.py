"""What every catalog reader shares, without SQLAlchemy: statuses, the schema's revision, time.

Why a module of its own: the read-only commands (`list`, `show`, `audit`) read the catalog
through lifeos_backup.storage.catalog.view, which must not import SQLAlchemy (its import is about
half of their start-up), yet they speak of the same statuses, the same newest migration and the
same canonical times as the store, the models and the audit chain, which import these names
from here.
"""

from __future__ import annotations

from datetime import UTC, datetime

from lifeos_backup.core.errors import NotFound, PermanentError

RUNNING, CREATED, VERIFIED, FAILED, DELETED = "running", "created", "verified", "failed", "deleted"
# Set only by `catalog rebuild`: listed from a manifest it was told to trust without re-reading
# the archive (`--trust-manifests`), or an archive found without its manifest.
UNVERIFIED, INCOMPLETE = "unverified", "incomplete"
# Set by `forget` before it removes anything: the row says what is going while remote objects and
# local files are removed; `deleted` once all are gone (rotation and the sync finish a crashed one).
DELETING = "deleting"
STATUSES = (RUNNING, CREATED, VERIFIED, FAILED, DELETING, DELETED, UNVERIFIED, INCOMPLETE)

# An audit record's status: how its action ended.
SUCCEEDED, FAILED_ACTION = "succeeded", "failed"

# The newest migration (a unit test checks it against migrations/versions). A catalog already
# there is not handed to Alembic at all: importing it costs every CLI call about 0.4 s.
HEAD = "0007_offsite_copies"


def utcnow() -> datetime:
    """Now, as an aware UTC datetime: the time of every catalog and audit record."""
    return datetime.now(UTC)


def iso(at: datetime) -> str:
    """A catalog time as text: UTC, with microseconds (what both SQLite and PostgreSQL store
    exactly), so the audit chain hashes a record the same whoever reads it back."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")


class CatalogUnreadable(PermanentError):
    """The catalog database cannot be opened or read (missing server, corrupt file)."""


def unreadable_error(detail: str, embedded: bool) -> CatalogUnreadable:
    """The one-line error for a catalog that cannot be read, with the way out: `embedded` is
    an SQLite file in the repository (rebuilt from the manifests), else a database server."""
    if embedded:
        return CatalogUnreadable(
            "the catalog cannot be read",
            detail,
            "run `lifeos-backup catalog rebuild`; docs/runbook.md, the catalog is lost or corrupt",
        )
    return CatalogUnreadable(
        "the catalog database cannot be reached or read",
        detail,
        "check LIFEOS_CATALOG_URL and the database server",
    )


def no_such_backup(backup_id: str) -> NotFound:
    """The error for an id the catalog does not hold (the store and the view raise it)."""
    return NotFound(f"no backup {backup_id!r} in the catalog", hint="see `lifeos-backup list`")
