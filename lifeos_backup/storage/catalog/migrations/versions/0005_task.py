"""Backups: the task now responsible for a backup (its create task, then its verify task).

The sweeper (lifeos_backup.jobs.leftovers) resolves a `running` or `created` backup whose task is
gone; it needs to know which task that is.

Revision ID: 0005_task
Revises: 0004_audit
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_task"
down_revision = "0004_audit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("backups") as batch:
        batch.add_column(sa.Column("task_id", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("backups") as batch:
        batch.drop_column("task_id")
