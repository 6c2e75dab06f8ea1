"""sessions queue their tasks; tasks know their worker's inbox

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 15:32:16.367891
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("active_task_id", sa.String(length=64), nullable=True))

    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("inbox", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
    # Every task that exists already went to the broker when it was created.
    op.execute("UPDATE tasks SET dispatched_at = created_at")


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("dispatched_at")
        batch_op.drop_column("inbox")

    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("active_task_id")
