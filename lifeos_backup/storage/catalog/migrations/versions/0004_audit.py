"""Audit trail: `actions` becomes the hash-chained audit table; `audit_anchor` holds the chain's
ends (the hash of the last record removed by rotation, and the newest record).

Rows that existed before this revision are chained here, oldest first, with a frozen copy of
the version-1 record hash (lifeos_backup.storage.audit.record_hash must keep producing the same
bytes).

Revision ID: 0004_audit
Revises: 0003_drills
Create Date: 2026-11-28
"""

import hashlib
import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0004_audit"
down_revision = "0003_drills"
branch_labels = None
depends_on = None

GENESIS = "0" * 64
_COLUMNS = (
    ("status", sa.String(16)),
    ("size", sa.BigInteger),
    ("duration_s", sa.Float),
    ("location", sa.Text),
    ("prev_hash", sa.String(64)),
    ("hash", sa.String(64)),
)


def _at(value: object) -> str:
    """SQLite hands back text, PostgreSQL an aware datetime; both become the same ISO string."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.isoformat(timespec="microseconds")


def _hash(row: sa.Row, prev_hash: str) -> str:
    """Frozen copy of lifeos_backup.storage.audit.record_hash, format version 1."""
    document = {
        "v": 1,
        "id": row.id,
        "at": _at(row.at),
        "action": row.action,
        "target": row.target,
        "actor": row.actor,
        "backup_id": row.backup_id,
        "status": "succeeded",
        "size": None,
        "duration_s": None,
        "location": None,
        "detail": row.detail,
        "prev_hash": prev_hash,
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def upgrade() -> None:
    with op.batch_alter_table("actions") as batch:
        for name, type_ in _COLUMNS:
            batch.add_column(sa.Column(name, type_))
    anchor = op.create_table(
        "audit_anchor",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("base_hash", sa.String(64), nullable=False),
        sa.Column("base_id", sa.Integer, nullable=False),
        sa.Column("removed", sa.Integer, nullable=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.Column("head_id", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    conn = op.get_bind()
    actions = sa.table(
        "actions",
        *(sa.column(n) for n in ("id", "at", "action", "target", "actor", "backup_id", "detail")),
        sa.column("status"),
        sa.column("prev_hash"),
        sa.column("hash"),
    )
    prev, head_id = GENESIS, 0
    for row in conn.execute(sa.select(actions).order_by(actions.c.id)).all():
        digest = _hash(row, prev)
        conn.execute(
            actions.update()
            .where(actions.c.id == row.id)
            .values(status="succeeded", prev_hash=prev, hash=digest)
        )
        prev, head_id = digest, row.id
    op.bulk_insert(
        anchor,
        [
            {
                "id": 1,
                "base_hash": GENESIS,
                "base_id": 0,
                "removed": 0,
                "head_hash": prev,
                "head_id": head_id,
                "updated_at": datetime.now(UTC),
            }
        ],
    )


def downgrade() -> None:
    op.drop_table("audit_anchor")
    with op.batch_alter_table("actions") as batch:
        for name, _type in reversed(_COLUMNS):
            batch.drop_column(name)
