"""Off-site copies per target: one row per backup and target; parts know their target.

Existing off-site state was that of the one target LIFEOS_S3_* made, now named `s3`: it is
copied into offsite_copies under that name, so nothing already uploaded is uploaded again.

Revision ID: 0007_offsite_copies
Revises: 0006_dashboard
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_offsite_copies"
down_revision = "0006_dashboard"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "offsite_copies",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("backup_id", sa.String(128), nullable=False, index=True),
        sa.Column("target", sa.String(64), nullable=False, index=True),
        sa.Column("status", sa.String(16)),
        sa.Column("key", sa.Text),
        sa.Column("checksum", sa.String(96)),
        sa.Column("uploaded_at", sa.DateTime(timezone=True)),
        sa.Column("checked_at", sa.DateTime(timezone=True)),
        sa.Column("error", sa.Text),
        sa.Column("attempts", sa.Integer),
        sa.Column("upload_id", sa.Text),
        sa.Column("updated_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("backup_id", "target", name="uq_offsite_copies_target"),
    )
    op.execute(
        "INSERT INTO offsite_copies (backup_id, target, status, key, checksum, uploaded_at, "
        "checked_at, error, attempts, upload_id, updated_at) "
        "SELECT id, 's3', offsite_status, offsite_key, offsite_checksum, offsite_uploaded_at, "
        "offsite_checked_at, offsite_error, offsite_attempts, offsite_upload_id, "
        "offsite_uploaded_at FROM backups WHERE offsite_status IS NOT NULL"
    )
    with op.batch_alter_table("offsite_parts") as batch:
        batch.add_column(sa.Column("target", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("offsite_parts") as batch:
        batch.drop_column("target")
    op.drop_table("offsite_copies")
