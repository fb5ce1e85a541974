"""Drills: one row per restore drill (lifeos_backup.monitoring.drill).

Revision ID: 0003_drills
Revises: 0002_offsite
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_drills"
down_revision = "0002_offsite"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drills",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False, index=True),
        sa.Column("backup_id", sa.String(128), nullable=False, index=True),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("duration_s", sa.Float),
        sa.Column("restore_s", sa.Float),
        sa.Column("report_path", sa.Text),
        sa.Column("details", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("drills")
