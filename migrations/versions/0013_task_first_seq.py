"""A task notes the number of its run's first event

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 06:00:00.000000

A task that failed can be retried: its new run streams its events after those of the earlier
runs, from ``tasks.first_seq``, so that the task's stream reads as one. Every task before
this revision ran once, from event 0.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("first_seq", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("first_seq")
