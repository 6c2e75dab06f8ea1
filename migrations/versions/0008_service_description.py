"""Services keep what a worker reported of their workflow

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 22:10:00.000000

The workflow-server API serves a workflow's event schemas and graph. Only the workers hold
the workflow's code, so one of them describes it on request, and the control plane keeps
the answer with the deployment version it belongs to.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("services", schema=None) as batch_op:
        batch_op.add_column(sa.Column("description", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("described_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("services", schema=None) as batch_op:
        batch_op.drop_column("described_version")
        batch_op.drop_column("description")
