"""A task's life as a person reads it: queued, started, waiting for input, retrying, ended.

The task row keeps only its latest times, so the story is put together from what is stored
beside it: each run (``task_attempts``: worker, start, end, outcome), the questions its
workflow asked (``InputRequiredEvent`` in its stream) and the answers sent in (its input
events). Nothing here is stored; it is read when asked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select

from app.control.tasks import Tasks
from app.db import Database
from app.models import AttemptOutcome, Event, EventDirection, Task, TaskAttempt, TaskStatus

#: The type of the event a workflow streams to ask a person (llama-index's).
QUESTION = "InputRequiredEvent"
#: Characters of a question kept in its moment's note.
QUESTION_CHARS = 200


#: How a task's end reads, where no run's end told it already.
_ENDINGS = {
    TaskStatus.SUCCEEDED: "the task succeeded",
    TaskStatus.FAILED: "the task failed",
    TaskStatus.CANCELLED: "the task was cancelled",
    TaskStatus.TIMED_OUT: "the task timed out",
}


@dataclass(frozen=True)
class Moment:
    """One step of a task's life."""

    at: dt.datetime
    #: The status the task took then (``queued``, ``running``, ``waiting_input``,
    #: ``retrying``, an ending), or a run's outcome (``lost`` too).
    status: str
    #: What happened, in words.
    note: str
    #: The run's or the task's error, where the step is a failure.
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class InputEvent:
    """A question the workflow asked, or an event sent into it, with when it was stored."""

    at: dt.datetime
    direction: str
    type: str
    data: dict[str, Any]


def timeline(task: Task, runs: Iterable[TaskAttempt], inputs: Iterable[InputEvent]) -> list[Moment]:
    """The moments of ``task``'s life, in order (a retry due later comes last)."""
    runs = sorted(runs, key=lambda run: run.attempt)
    created = f"created for service {task.service}"
    moments = [Moment(task.created_at, TaskStatus.QUEUED.value, created)]
    for index, run in enumerate(runs):
        moments.append(
            Moment(
                run.started_at, TaskStatus.RUNNING.value, f"run {run.attempt} began on {run.worker}"
            )
        )
        if run.finished_at is None or run.outcome is None:
            continue
        again = index < len(runs) - 1 or task.task_status is TaskStatus.RETRYING
        moments.append(_run_end(run, again))
    for event in inputs:
        moments.append(_input(event))
    status = task.task_status
    if status.terminal and task.finished_at is not None and not _told(runs, task):
        moments.append(Moment(task.finished_at, status.value, _ENDINGS[status], task.error))
    if status is TaskStatus.RETRYING and task.retry_at is not None:
        moments.append(Moment(task.retry_at, TaskStatus.QUEUED.value, "due to run again"))
    # Stable: a run's start stays before an event stored in the same instant.
    return sorted(moments, key=lambda moment: moment.at)


def _run_end(run: TaskAttempt, again: bool) -> Moment:
    """The end of one run; a failed one that was followed by another is a retry."""
    assert run.finished_at is not None and run.outcome is not None
    if run.outcome == AttemptOutcome.PARKED.value:
        note = f"run {run.attempt} let go while it waited for input (parked)"
        return Moment(run.finished_at, TaskStatus.WAITING_INPUT.value, note)
    if again and run.outcome != AttemptOutcome.SUCCEEDED.value:
        note = f"run {run.attempt} {run.outcome}; the task runs again"
        return Moment(run.finished_at, TaskStatus.RETRYING.value, note, run.error)
    return Moment(run.finished_at, run.outcome, f"run {run.attempt} {run.outcome}", run.error)


def _input(event: InputEvent) -> Moment:
    """A question asked (the task waits for input), or an answer sent in."""
    if event.direction == EventDirection.OUT.value:
        question = str(event.data.get("prefix") or "").strip()
        if len(question) > QUESTION_CHARS:
            question = question[: QUESTION_CHARS - 1] + "…"
        note = f"asked: {question}" if question else "asked for input"
        return Moment(event.at, TaskStatus.WAITING_INPUT.value, note)
    return Moment(event.at, TaskStatus.RUNNING.value, f"{event.type} sent in")


def _told(runs: list[TaskAttempt], task: Task) -> bool:
    """Whether the last run's end already tells how the task ended (same outcome)."""
    return bool(runs) and runs[-1].outcome == task.status and runs[-1].finished_at is not None


class Timelines:
    """Reads what a task's timeline is made of."""

    def __init__(self, db: Database, tasks: Tasks) -> None:
        self._db = db
        self._tasks = tasks

    def of(self, deployment: str, task_id: str, session_id: str | None = None) -> list[Moment]:
        """The timeline of one task of ``deployment`` (:class:`NotFound` if there is none)."""
        task = self._tasks.get(deployment, task_id, session_id, with_attempts=True)
        query = (
            select(Event.created_at, Event.direction, Event.type, Event.data)
            .where(
                Event.task_id == task_id,
                or_(Event.direction == EventDirection.IN.value, Event.type == QUESTION),
            )
            .order_by(Event.created_at, Event.id)
        )
        with self._db.read() as db:
            inputs = [InputEvent(*row) for row in db.execute(query)]
        return timeline(task, task.attempt_history, inputs)
