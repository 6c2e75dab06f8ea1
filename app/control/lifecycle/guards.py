"""Status guards of the lifecycle's statements, built from the transition table alone."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import ColumnElement, false, or_

from app.models import Operation, Task, TaskStatus
from app.models.base import table_of
from app.models.task import MOVES

_tasks = table_of(Task)


def status_in(statuses: Iterable[TaskStatus]) -> ColumnElement[bool]:
    """``status IN (...)`` written as comparisons: SQLAlchemy re-renders an IN list's SQL on
    every execution, and these statements run for every task."""
    ordered = sorted(statuses, key=list(TaskStatus).index)
    if not ordered:
        return false()
    return or_(*(_tasks.c.status == status.value for status in ordered))


def may_move(target: TaskStatus, by: Operation) -> ColumnElement[bool]:
    """True for a task whose status operation ``by`` may move to ``target``."""
    return status_in(target.sources(by))


def unfinished() -> ColumnElement[bool]:
    """True for a task that the table still lets a run move (it has not ended): an ended
    task moves only when a client retries it."""
    return status_in(
        status
        for status, targets in MOVES.items()
        if any(operations - {Operation.RETRY} for operations in targets.values())
    )
