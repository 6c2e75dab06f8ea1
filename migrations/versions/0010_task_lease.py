"""A running task notes when its worker last said it holds it

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-02 11:00:00.000000

Every running task, and every task waiting for input, is held by a live worker: the worker
reports the task's start, then lists the task in each of its heartbeats. ``tasks.held_at`` is
the time of the latest of these; the control-plane consumer queues again, and sends again, a
task that no worker held for longer than the lease. Tasks running before this revision count
as held since their start.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("held_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE tasks SET held_at = started_at WHERE status IN ('running', 'waiting_input')")


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("held_at")
