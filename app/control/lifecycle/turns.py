"""A session runs one task at a time: whose turn it is, and who goes next.

Tasks of one session share its workflow Context, so they must not run at once. When a task
arrives while another of its session is unfinished, the client's ``multitask_strategy`` says
what happens: ``enqueue`` (the default) stores it and starts it when the session is free,
in order of arrival; ``reject`` refuses it with 409. The session row is locked while this is
decided (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite has one writer at a time).

The functions that take a connection run inside the lifecycle's transactions: only the
lifecycle (``app.control.lifecycle.operations``) changes sessions.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, bindparam, select
from sqlalchemy.orm import Session as DbSession

from app.errors import Conflict, NotFound
from app.models import Deployment, Session, Task, TaskStatus
from app.models.base import table_of, utcnow

_sessions = table_of(Session)
_tasks = table_of(Task)
_deployments = table_of(Deployment)

_SESSION_FOR_TASK = (
    select(_sessions.c.active_task_id, _sessions.c.state)
    .where(
        _sessions.c.id == bindparam("session_id"),
        _sessions.c.deployment_id == bindparam("deployment_id"),
        _sessions.c.deleted_at.is_(None),
    )
    .with_for_update()
)
_CONTEXT = select(_sessions.c.state).where(_sessions.c.id == bindparam("session_id"))
_CLAIM = (
    _sessions.update()
    .where(_sessions.c.id == bindparam("session_id"))
    .values(active_task_id=bindparam("p_task_id"))
)
_MARK_DISPATCHED = (
    _tasks.update()
    .where(_tasks.c.id == bindparam("task_id"))
    .values(dispatched_at=bindparam("now"))
)
_STATUS = select(_tasks.c.status).where(_tasks.c.id == bindparam("task_id"))
_NEXT_WAITING = (
    select(_tasks, _deployments.c.name.label("deployment_name"), _deployments.c.version)
    .join(_deployments, _deployments.c.id == _tasks.c.deployment_id)
    .where(
        _tasks.c.session_id == bindparam("session_id"),
        _tasks.c.status == TaskStatus.QUEUED.value,
        _tasks.c.dispatched_at.is_(None),
    )
    .order_by(_tasks.c.created_at, _tasks.c.id)
    .limit(1)
)


class MultitaskStrategy(str, enum.Enum):
    """What to do with a task sent to a session that is busy with another."""

    ENQUEUE = "enqueue"
    REJECT = "reject"


@dataclass(frozen=True)
class Turn:
    """The outcome of asking for a session: run now (with its Context) or wait."""

    run_now: bool
    context: dict[str, Any] | None


def take_turn(
    conn: Connection,
    session_id: str,
    deployment_id: int,
    task_id: str,
    strategy: MultitaskStrategy,
) -> Turn:
    """Claim the session for ``task_id`` if it is free; else queue or refuse, per strategy."""
    row = conn.execute(
        _SESSION_FOR_TASK, {"session_id": session_id, "deployment_id": deployment_id}
    ).first()
    if row is None:
        raise NotFound(f"session {session_id!r} not found")
    active, state = row
    if active is not None:
        status = conn.scalar(_STATUS, {"task_id": active})
        if status is None or TaskStatus(status).terminal:
            active = None  # its end was recorded without freeing the session: heal
    if active is not None:
        if strategy is MultitaskStrategy.REJECT:
            raise Conflict(
                f"session {session_id!r} is busy with task {active}; send the task again "
                "when it ends, or with multitask_strategy=enqueue to queue it",
                errors={"session_id": session_id, "active_task_id": active},
            )
        return Turn(run_now=False, context=None)
    conn.execute(_CLAIM, {"session_id": session_id, "p_task_id": task_id})
    return Turn(run_now=True, context=state or None)


def pass_turn(
    conn: Connection, session_id: str, task_id: str, context: dict[str, Any] | None
) -> Row[Any] | None:
    """``task_id`` ended: keep its Context, free the session and hand it to the next task.

    Returns the next task's row (with ``deployment_name`` and ``version``), already marked
    dispatched, for the caller to send once the transaction commits; None if none waits. A
    task of a capped service (``cap_group`` set) is not marked: its turn is only the right to
    wait for a slot of its service's cap (``caps``), which the caller asks for.
    """
    values: dict[str, Any] = {"active_task_id": None}
    if context is not None:
        values["state"] = context
    freed = conn.execute(
        _sessions.update()
        .where(_sessions.c.id == session_id, _sessions.c.active_task_id == task_id)
        .values(**values)
    ).rowcount
    if not freed:
        return None
    following = conn.execute(_NEXT_WAITING, {"session_id": session_id}).first()
    if following is None:
        return None
    conn.execute(_CLAIM, {"session_id": session_id, "p_task_id": following.id})
    if following.cap_group is None:
        conn.execute(_MARK_DISPATCHED, {"task_id": following.id, "now": utcnow()})
    return following


def session_context(conn: Connection, session_id: str) -> dict[str, Any] | None:
    """The session's stored Context."""
    state = conn.scalar(_CONTEXT, {"session_id": session_id})
    return state or None


def find_session(db: DbSession, deployment_id: int, session_id: str) -> Session:
    """A live session of the deployment, or :class:`NotFound`."""
    row = db.get(Session, session_id)
    if row is None or row.deployment_id != deployment_id or row.deleted_at is not None:
        raise NotFound(f"session {session_id!r} not found")
    return row
