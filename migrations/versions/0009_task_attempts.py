"""task_attempts: each run of a task, with its worker, start, end, outcome and error

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 10:00:00.000000

One row per run of a task's step, written by the task lifecycle from the workers' start and
end reports. A run is known by its worker's name and the time it began, which its worker
sends in both reports; ``attempt`` is the number the control plane gave it. Tasks that ran
before this revision keep their ``attempts`` count, and no history: their next run, if any,
is numbered after that count.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "task_attempts",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=20), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_task_attempts_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_id", "attempt", name=op.f("pk_task_attempts")),
        sa.UniqueConstraint(
            "task_id", "worker", "started_at", name=op.f("uq_task_attempts_task_id")
        ),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("task_attempts")
