"""Dashboard: its user accounts with their roles, and restore requests with their approvals.

Revision ID: 0006_dashboard
Revises: 0005_task
Create Date: 2026-12-14
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_dashboard"
down_revision = "0005_task"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dashboard_users",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False, server_default=""),
    )
    op.create_table(
        "restore_requests",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("backup_id", sa.String(128), nullable=False, index=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("production", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("approved_by", sa.String(64)),
        sa.Column("approved_at", sa.DateTime(timezone=True)),
        sa.Column("task_id", sa.String(64)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("error", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("restore_requests")
    op.drop_table("dashboard_users")
