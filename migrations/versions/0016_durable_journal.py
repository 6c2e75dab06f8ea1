"""Durable runs: tasks' journals, checkpoints and steps, and parked tasks

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02 15:00:00.000000

Tasks of services marked durable journal their workflow's ticks (``journal_ticks``), keep a
checkpoint (``checkpoints``) and list the steps that ended (``task_steps``); a durable task
that waits for input with no worker is parked (``tasks.parked_at``). Every task before this
revision is of a service that was not durable: nothing to fill.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def _task_key() -> sa.Column[str]:
    return sa.Column(
        "task_id",
        sa.String(length=64),
        sa.ForeignKey("tasks.id", ondelete="CASCADE"),
        primary_key=True,
    )


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parked_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("wake_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "journal_ticks",
        _task_key(),
        sa.Column("run", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("input_seq", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "checkpoints",
        _task_key(),
        sa.Column("run", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("snapshot", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("journal_seq", sa.Integer(), nullable=False),
        sa.Column("state", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("state_through", sa.Integer(), nullable=False),
        sa.Column("inputs", sa.Integer(), nullable=False),
        sa.Column("waiters", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "task_steps",
        _task_key(),
        sa.Column("run", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("step", sa.String(length=200), nullable=False),
        sa.Column("input", sa.String(length=500), nullable=False),
        sa.Column("input_key", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=300), nullable=False),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("task_steps")
    op.drop_table("checkpoints")
    op.drop_table("journal_ticks")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("wake_at")
        batch_op.drop_column("parked_at")
