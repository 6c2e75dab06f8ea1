"""A durable task's step attempts are numbered when they are listed, not stored

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03 08:00:00.000000

``task_steps.attempt`` was counted as each row was written, with a subquery over the task's
rows: two messages of one run written side by side could count the same number, and the
count cost every step's write. The listing numbers the executions of a step on one event in
the order they ended (run, then tick) instead, which is what the column held.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("task_steps", schema=None) as batch_op:
        batch_op.drop_column("attempt")


def downgrade() -> None:
    """Revert this revision: the column comes back, filled as the listing numbers them."""
    with op.batch_alter_table("task_steps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="1"))
    steps = sa.table(
        "task_steps",
        sa.column("task_id"),
        sa.column("run"),
        sa.column("seq"),
        sa.column("step"),
        sa.column("input_key"),
        sa.column("attempt"),
    )
    earlier = steps.alias("earlier")
    count = (
        sa.select(sa.func.count())
        .where(
            earlier.c.task_id == steps.c.task_id,
            earlier.c.step == steps.c.step,
            earlier.c.input_key == steps.c.input_key,
            sa.tuple_(earlier.c.run, earlier.c.seq) <= sa.tuple_(steps.c.run, steps.c.seq),
        )
        .scalar_subquery()
    )
    op.execute(steps.update().values(attempt=count))
    with op.batch_alter_table("task_steps", schema=None) as batch_op:
        batch_op.alter_column("attempt", server_default=None)
