"""The audit trail: who did what, when, to what, how it ended, how big, how long, and where.

Auditors ask who restored what and when; the answer must be trustworthy, so the records are
hash-chained: each holds the SHA-256 of its own fields plus the hash of the record before it
(canonical JSON, see `record_hash`). Editing a record breaks its own hash; deleting one breaks
the link of the next; the newest record's hash is also kept in `audit_anchor`, so deleting the
newest record shows as well. `verify` walks the chain and names the records that do not fit.

One writer for every recorder (`append`, in lifeos_backup.storage.catalog.chain): the workers after
each task run (lifeos_backup.jobs.audit_tasks), the CLI for restores and other operator actions
(`audited`), and the existing recorders of flag changes, rollbacks and entity restores
(`Catalog.record_action`). Appends from several processes are serialized (a PostgreSQL advisory
lock, or a file lock beside an SQLite catalog), so two writers can never both chain onto the same
record and fork the chain.

Records older than LIFEOS_AUDIT_RETENTION_DAYS are removed by `rotate`, oldest first; the hash of
the last removed record becomes the anchor's base, where verification starts.
"""

from __future__ import annotations

import getpass
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select

from lifeos_backup.core.errors import ConfigError, PermanentError
from lifeos_backup.storage.audit_query import (  # noqa: F401  (importers find them here too)
    ACTIONS,
    FAILED,
    action_filters,
    as_dict,
    parse_since,
)
from lifeos_backup.storage.catalog.chain import (
    GENESIS,
    SUCCEEDED,
    append,
    chain_lock,
    fields_of,
    load_anchor,
    record_hash,
    serialize_appends,
)
from lifeos_backup.storage.catalog.models import Action, AuditAnchor, utcnow
from lifeos_backup.storage.catalog.store import Catalog

log = logging.getLogger(__name__)


class AuditChainBroken(PermanentError):
    """The audit chain does not verify; rotation refuses to remove the evidence."""


def operator() -> str:
    """The operator's user name for records of CLI actions."""
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers with an arbitrary uid)
        return "operator"


@dataclass
class AuditEntry:
    """What an `audited` block learns while it runs (size, where the result went, ...)."""

    target: str
    size: int | None = None
    location: str | None = None
    backup_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    status: str | None = None  # set by blocks that fail without raising (a failed drill)


@contextmanager
def audited(
    catalog: Catalog, action: str, target: str, initiator: str | None = None
) -> Iterator[AuditEntry]:
    """Record the block as one audit record: succeeded, or failed with the error, and timed.

    A failure to write the record is logged, never raised: the action itself already happened
    (or failed with its own, more useful, error).
    """
    entry = AuditEntry(target=target)
    started = time.monotonic()
    try:
        yield entry
    except BaseException as exc:
        entry.detail.setdefault("error", f"{type(exc).__name__}: {exc}"[:2000])
        record_quietly(catalog, action, entry, initiator, FAILED, time.monotonic() - started)
        raise
    status = entry.status or SUCCEEDED
    record_quietly(catalog, action, entry, initiator, status, time.monotonic() - started)


def record_quietly(
    catalog: Catalog,
    action: str,
    entry: AuditEntry,
    initiator: str | None,
    status: str,
    seconds: float,
) -> int | None:
    try:
        return append(
            catalog,
            action=action,
            target=entry.target,
            initiator=initiator or operator(),
            status=status,
            size=entry.size,
            duration_s=seconds,
            location=entry.location,
            backup_id=entry.backup_id,
            detail=entry.detail,
        )
    except Exception:
        log.exception("could not write the audit record of %s %s", action, entry.target)
        return None


# ----------------------------------------------------------------------------- verifying


@dataclass(frozen=True)
class Problem:
    """One place where the chain does not fit; `record_id` is the record that shows it."""

    record_id: int | None
    what: str


@dataclass
class Verification:
    checked: int
    base_id: int
    head_id: int | None
    problems: list[Problem]
    head_hash: str | None = None  # worth copying somewhere the catalog's writers cannot reach

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "base_id": self.base_id,
            "head_id": self.head_id,
            "head_hash": self.head_hash,
            "problems": [{"record_id": p.record_id, "what": p.what} for p in self.problems],
        }


def _check_rows(rows: list[Action], base_hash: str, base_id: int) -> list[Problem]:
    """Each row's own hash, and its link to the row before (or to the rotation base)."""
    problems: list[Problem] = []
    prev_hash, prev_id = base_hash, base_id
    for row in rows:
        if row.hash is None or row.prev_hash is None:
            problems.append(Problem(row.id, "has no hash: written outside the audit trail"))
            continue
        if row.id <= base_id:
            problems.append(Problem(row.id, f"is at or before the rotation base {base_id}"))
        if record_hash(fields_of(row), row.prev_hash) != row.hash:
            problems.append(Problem(row.id, "was edited: its fields no longer match its hash"))
        if row.prev_hash != prev_hash:
            after = f"record {prev_id}" if prev_id else "the start of the chain"
            problems.append(
                Problem(
                    row.id,
                    f"does not follow {after}: a record between them was deleted, or "
                    f"record {prev_id} was replaced",
                )
            )
        prev_hash, prev_id = row.hash, row.id
    return problems


def verify(catalog: Catalog) -> Verification:
    """Walk the chain from the anchor's base to its head; every misfit becomes a Problem."""
    with catalog.session() as s:
        anchor = s.get(AuditAnchor, 1)
        rows = list(s.scalars(select(Action).order_by(Action.id)))
    if anchor is None:
        problems = [Problem(None, "the audit anchor row is missing (table audit_anchor)")]
        return Verification(len(rows), 0, None, problems + _check_rows(rows, GENESIS, 0))
    problems = _check_rows(rows, anchor.base_hash, anchor.base_id)
    last_id = rows[-1].id if rows else anchor.base_id
    last_hash = rows[-1].hash if rows else anchor.base_hash
    if (anchor.head_id, anchor.head_hash) != (last_id, last_hash):
        problems.append(
            Problem(
                anchor.head_id,
                f"the newest record {anchor.head_id} is missing or was replaced "
                f"(the chain now ends at {last_id or 'nothing'})",
            )
        )
    return Verification(len(rows), anchor.base_id, anchor.head_id, problems, anchor.head_hash)


# ----------------------------------------------------------------------------- rotation


def rotate(
    catalog: Catalog, keep_days: int, now: datetime | None = None, dry_run: bool = False
) -> int:
    """Remove records older than `keep_days`, oldest first; returns how many (would) go.

    Only a verified prefix of the chain is removed, and its last hash becomes the anchor's base,
    so what stays verifies on its own. A broken prefix is refused (AuditChainBroken): rotation
    must never destroy the evidence of tampering.
    """
    if keep_days < 1:
        raise ConfigError(
            "LIFEOS_AUDIT_RETENTION_DAYS must be at least 1", f"got {keep_days}", "default 90"
        )
    cutoff = (now or utcnow()) - timedelta(days=keep_days)
    with chain_lock(catalog), catalog.session() as s:
        serialize_appends(s)
        anchor = load_anchor(s)
        old = list(
            s.scalars(
                select(Action)
                .where(Action.id > anchor.base_id, Action.at < cutoff)
                .order_by(Action.id)
            )
        )
        first_new = s.scalar(
            select(Action.id).where(Action.at >= cutoff).order_by(Action.id).limit(1)
        )
        prefix = [row for row in old if first_new is None or row.id < first_new]
        if not prefix:
            return 0
        broken = _check_rows(prefix, anchor.base_hash, anchor.base_id)
        if broken:
            raise AuditChainBroken(
                f"audit record {broken[0].record_id} {broken[0].what}",
                f"{len(broken)} problem(s) among the {len(prefix)} records due for removal",
                "nothing was removed; run `lifeos-backup audit verify` and investigate",
            )
        if not dry_run:
            last = prefix[-1]
            s.execute(delete(Action).where(Action.id <= last.id))
            anchor.base_hash, anchor.base_id = str(last.hash), last.id
            anchor.removed += len(prefix)
            anchor.updated_at = utcnow()
        return len(prefix)


# ----------------------------------------------------------------------------- reading

def records(
    catalog: Catalog, since: datetime | None = None, action: str | None = None
) -> list[Action]:
    """Records, oldest first; `action` matches a prefix (`restore` finds restore.json, ...)."""
    query = select(Action).order_by(Action.id)
    if since is not None:
        query = query.where(Action.at >= since)
    if action:
        query = query.where(Action.action.startswith(action))
    with catalog.session() as s:
        return list(s.scalars(query))


def location_of(host: str | None, path: Path | str) -> str:
    """`host:/abs/path`: with workers on several hosts a path alone does not say where."""
    return f"{host}:{path}" if host else str(path)
