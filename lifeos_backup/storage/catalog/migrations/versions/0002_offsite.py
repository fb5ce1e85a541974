"""Off-site copies: per-backup remote state, and the finished parts of multipart uploads.

Revision ID: 0002_offsite
Revises: 0002_app
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_offsite"
down_revision = "0002_app"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("offsite_status", sa.String(16)),
    ("offsite_key", sa.Text),
    ("offsite_checksum", sa.String(96)),
    ("offsite_uploaded_at", sa.DateTime(timezone=True)),
    ("offsite_checked_at", sa.DateTime(timezone=True)),
    ("offsite_error", sa.Text),
    ("offsite_attempts", sa.Integer),
    ("offsite_upload_id", sa.Text),
)


def upgrade() -> None:
    with op.batch_alter_table("backups") as batch:
        for name, type_ in _COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
        batch.create_index("ix_backups_offsite_status", ["offsite_status"])
    op.create_table(
        "offsite_parts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("backup_id", sa.String(128), nullable=False, index=True),
        sa.Column("upload_id", sa.Text, nullable=False),
        sa.Column("part_number", sa.Integer, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("etag", sa.String(128), nullable=False),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("offsite_parts")
    with op.batch_alter_table("backups") as batch:
        batch.drop_index("ix_backups_offsite_status")
        for name, _type in reversed(_COLUMNS):
            batch.drop_column(name)
