"""The first steps of tasks sent again, and the deadlines they carry."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection

from app.control.lifecycle.turns import session_context
from app.control.routing import first_step
from workers.protocol import RunStep


def expiry(controls: dict[str, Any] | None, queued_at: dt.datetime) -> dt.datetime | None:
    """When a task queued at ``queued_at`` expires, by its ``queue-timeout`` (None: never)."""
    wait = (controls or {}).get("queue-timeout")
    return None if wait is None else queued_at + dt.timedelta(seconds=wait)


def timestamp_of(at: dt.datetime | None) -> float | None:
    """A time as a UNIX timestamp, as messages carry it."""
    return None if at is None else at.timestamp()


def version_of(row: Any) -> int:
    """The deployment version a task's steps name: the one a durable task's run started on
    (``tasks.pinned_version``), else the deployment's current one (``row.version``)."""
    pinned = getattr(row, "pinned_version", None)
    return int(row.version if pinned is None else pinned)


def first_step_again(conn: Connection, row: Any) -> RunStep:
    """The first step of a task sent again (by the outbox, a lease's recovery, an answer to
    a parked task), in its session's Context as it is now, on the version it started on."""
    context = session_context(conn, row.session_id) if row.session_id else None
    return first_step(
        row,
        row.deployment_name,
        version_of(row),
        context=context,
        keep_context=bool(row.session_id),
        fresh=False,
    )
