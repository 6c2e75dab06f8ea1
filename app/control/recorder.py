"""Apply service workers' reports to the database; every method is idempotent."""

from __future__ import annotations

from sqlalchemy import update

from app.control.waiter import TaskWaiter
from app.db import Database
from app.models import Event, EventDirection, Task, TaskStatus
from app.models.base import from_timestamp
from workers.protocol import StepEvent, StepFinished, StepStarted


class Recorder:
    """Writes task progress; delivery is at least once, so repeats must change nothing."""

    def __init__(self, db: Database, waiter: TaskWaiter) -> None:
        self._db = db
        self._waiter = waiter

    def started(self, message: StepStarted) -> None:
        """A worker took the task: count the attempt and mark it running if it still can be."""
        at = from_timestamp(message.at)
        with self._db.begin() as db:
            db.execute(
                update(Task)
                .where(Task.id == message.task_id)
                .values(
                    attempts=Task.attempts + 1,
                    worker=message.worker,
                    started_at=at,
                )
            )
            db.execute(
                update(Task)
                .where(Task.id == message.task_id, Task.status.in_(_from(TaskStatus.RUNNING)))
                .values(status=TaskStatus.RUNNING)
            )
        self._waiter.notify(message.task_id)

    def event(self, message: StepEvent) -> None:
        """Store one streamed event (once, whatever the number of deliveries)."""
        event = message.event
        with self._db.begin() as db:
            if db.get(Task, message.task_id) is None:
                return  # the task was deleted with its deployment
            self._db.insert_ignoring_duplicates(
                db,
                Event,
                {
                    "task_id": message.task_id,
                    "direction": EventDirection.OUT.value,
                    "seq": message.seq,
                    "type": str(event.get("type", "Event"))[:200],
                    "qualified_name": str(event.get("qualified_name", ""))[:500],
                    "data": event.get("data", {}),
                    "created_at": from_timestamp(message.at),
                },
            )
        self._waiter.notify(message.task_id)

    def finished(self, message: StepFinished) -> None:
        """Record the outcome, unless the task already ended."""
        status = TaskStatus.SUCCEEDED if message.ok else TaskStatus.FAILED
        with self._db.begin() as db:
            db.execute(
                update(Task)
                .where(Task.id == message.task_id, Task.status.in_(_from(status)))
                .values(
                    status=status,
                    result=message.result,
                    error=message.error,
                    event_count=message.event_count,
                    finished_at=from_timestamp(message.at),
                )
            )
        self._waiter.notify(message.task_id)


def _from(target: TaskStatus) -> list[str]:
    return [s.value for s in target.sources()]
