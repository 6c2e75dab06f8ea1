"""A task's notification carries its outcome

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21 20:30:00.000000

The trigger of 0004 notified a task's id, and every waiting ``tasks/run`` then read the
task's status, result and error back: a round trip on every task's path. A task's status
change now notifies ``{"id", "status", "result", "error"}``, read from the row as it
commits, so the API server answers from the notification. PostgreSQL refuses payloads of
8000 bytes or more: a larger outcome notifies ``{"id", "status"}`` and is read back. A
stored event notifies ``{"id"}`` (its task's). Every payload is a JSON object, so no task
id, which clients choose, can pass for an outcome. SQLite has no notifications.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_WITH_OUTCOME = """
CREATE OR REPLACE FUNCTION celeriac_announce_task() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    payload text;
BEGIN
    IF TG_TABLE_NAME = 'events' THEN
        payload := json_build_object('id', NEW.task_id)::text;
    ELSE
        payload := json_build_object(
            'id', NEW.id, 'status', NEW.status, 'result', NEW.result, 'error', NEW.error
        )::text;
        IF octet_length(payload) >= 8000 THEN
            payload := json_build_object('id', NEW.id, 'status', NEW.status)::text;
        END IF;
    END IF;
    PERFORM pg_notify('celeriac_tasks', payload);
    RETURN NULL;
END
$$
"""

#: 0004's function.
_ID_ONLY = """
CREATE OR REPLACE FUNCTION celeriac_announce_task() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'events' THEN
        PERFORM pg_notify('celeriac_tasks', NEW.task_id);
    ELSE
        PERFORM pg_notify('celeriac_tasks', NEW.id);
    END IF;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    """Apply this revision."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_WITH_OUTCOME)


def downgrade() -> None:
    """Revert this revision."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_ID_ONLY)
