"""A task run on its own belongs to no session

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21 19:30:00.000000

``tasks/run`` without a session used to create a session row for the task and mark it
deleted at once (LlamaDeploy deleted the session it made after the run). Nothing could use
that session, and writing it cost the submit path a statement and its transaction. Such a
task now has no session: ``tasks.session_id`` may be empty.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.alter_column("session_id", existing_type=sa.String(length=64), nullable=True)


def downgrade() -> None:
    """Undo this revision: tasks without a session cannot stay, so they go."""
    op.execute(
        "DELETE FROM events WHERE task_id IN (SELECT id FROM tasks WHERE session_id IS NULL)"
    )
    op.execute("DELETE FROM tasks WHERE session_id IS NULL")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.alter_column("session_id", existing_type=sa.String(length=64), nullable=False)
