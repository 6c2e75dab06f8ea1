"""A task notes its group under its service's concurrency cap

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 09:00:00.000000

``tasks.cap_group`` is set on the tasks of a service whose ``celeriac`` block has a
``concurrency`` cap (see ``app.control.lifecycle.caps``); every task before this revision is
of a service without one. Two partial indexes hold only capped tasks that have not ended:
those sent (which hold a slot) and those waiting for a slot, by age.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_HELD = "cap_group IS NOT NULL AND dispatched_at IS NOT NULL AND finished_at IS NULL"
_WAITING = "cap_group IS NOT NULL AND dispatched_at IS NULL AND finished_at IS NULL"


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cap_group", sa.String(length=80), nullable=True))
    op.create_index(
        "ix_tasks_cap_held",
        "tasks",
        ["deployment_id", "service", "cap_group"],
        unique=False,
        sqlite_where=sa.text(_HELD),
        postgresql_where=sa.text(_HELD),
    )
    op.create_index(
        "ix_tasks_cap_waiting",
        "tasks",
        ["deployment_id", "service", "created_at", "id"],
        unique=False,
        sqlite_where=sa.text(_WAITING),
        postgresql_where=sa.text(_WAITING),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index("ix_tasks_cap_waiting", table_name="tasks")
    op.drop_index("ix_tasks_cap_held", table_name="tasks")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("cap_group")
