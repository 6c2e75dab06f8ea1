"""A task notes when its step reached the broker

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-21 21:30:00.000000

A task is committed, then its step is published. A process that dies between the two left
the task queued with no message anywhere, for ever. ``tasks.published_at`` is set once the
broker took the step (in batches, off the request's path); the control-plane consumer
sends again the steps of tasks that have waited too long without it. Tasks already stored
are taken as published when they were dispatched.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE tasks SET published_at = dispatched_at")


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("published_at")
