"""PostgreSQL announces task changes itself: NOTIFY from triggers

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 17:55:00.000000

API servers LISTEN on ``celeriac_tasks`` to wake the requests and event streams that wait
for a task (``app/control/notifications.py``). The recorder used to send each NOTIFY as a
statement of its own; triggers send it inside the change's transaction for free. A task
notifies when its status changes, and when an event it streamed is stored. PostgreSQL
delivers a notification when the transaction commits, never if it rolls back, and sends
one of several identical ones in a transaction. SQLite has no notifications: nothing to do.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_FUNCTION = """
CREATE FUNCTION celeriac_announce_task() RETURNS trigger LANGUAGE plpgsql AS $$
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

_TRIGGERS = """
CREATE TRIGGER celeriac_task_status_changed AFTER UPDATE OF status ON tasks
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION celeriac_announce_task();
CREATE TRIGGER celeriac_task_event_stored AFTER INSERT ON events
    FOR EACH ROW WHEN (NEW.direction = 'out')
    EXECUTE FUNCTION celeriac_announce_task();
"""


def upgrade() -> None:
    """Apply this revision."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_FUNCTION)
    op.execute(_TRIGGERS)


def downgrade() -> None:
    """Revert this revision."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER celeriac_task_event_stored ON events")
    op.execute("DROP TRIGGER celeriac_task_status_changed ON tasks")
    op.execute("DROP FUNCTION celeriac_announce_task()")
