"""Durable tasks name the deployment version they started on, which is kept until they end

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02 19:30:00.000000

``tasks.pinned_version`` is the deployment version a durable task's run started on; a reload
keeps that version's spec and base path in ``deployment_versions`` while such a task has not
ended (see ``app.control.versions``). Tasks before this revision have no pin: they resume on
the deployment's current version, as they did.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pinned_version", sa.Integer(), nullable=True))
    op.create_table(
        "deployment_versions",
        sa.Column(
            "deployment_id",
            sa.Integer(),
            sa.ForeignKey("deployments.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("base_path", sa.Text(), nullable=False),
        sa.Column("descriptions", sa.JSON(), nullable=False),
        sa.Column("kept_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("deployment_id", "version"),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("deployment_versions")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("pinned_version")
