"""Task controls: a run number, the task's controls, its deadlines, and stopped steps

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 08:30:00.000000

``tasks.run`` numbers the task's runs (retries by hand or by policy make new ones), so a late
report of an earlier run never touches the current one; every task before this revision is
on its first. ``controls`` holds the task's time limit, allowed queue wait and retry policy;
``expires_at`` and ``retry_at`` are the deadlines the control plane keeps. ``stopped_steps``
lists the runs cancelled before they ended, which workers must never start.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("run", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("controls", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "stopped_steps",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("run", sa.Integer(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "run", name=op.f("pk_stopped_steps")),
    )
    op.create_index(
        op.f("ix_stopped_steps_stopped_at"), "stopped_steps", ["stopped_at"], unique=False
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index(op.f("ix_stopped_steps_stopped_at"), table_name="stopped_steps")
    op.drop_table("stopped_steps")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("retry_at")
        batch_op.drop_column("expires_at")
        batch_op.drop_column("controls")
        batch_op.drop_column("run")
