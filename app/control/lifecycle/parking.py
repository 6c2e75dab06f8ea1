"""Parking: a durable task waits for input with no worker, and its answer sends it again.

A durable run that waits for input is let go by its worker (see ``workers.durable``); its
task stays ``waiting_input``, marked parked (``tasks.parked_at``), held by nobody: no lease
runs out, no step of it waits in a queue. An event sent in unparks it: the task is queued
and its step sent again, and the run resumes from its journal on whichever worker takes it.
An answer that arrived while the run was being let go, and that its journal does not
include, unparks it at once.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection, and_, bindparam, exists, func, select

from app.control.lifecycle import statements as sql
from app.control.lifecycle.attempts import Attempts, Run
from app.control.lifecycle.guards import may_move
from app.control.lifecycle.statements import same_run
from app.control.lifecycle.steps import first_step_again
from app.db import Database
from app.models import Checkpoint, EventDirection, JournalTick, Operation, TaskStatus
from app.models.base import from_timestamp, table_of, utcnow
from workers.protocol import RunStep, StepFinished

_checkpoints = table_of(Checkpoint)
_ticks = table_of(JournalTick)

_PARK = (
    sql.tasks.update()
    .where(
        sql.tasks.c.id == bindparam("task_id"),
        same_run(),
        may_move(TaskStatus.WAITING_INPUT, Operation.PARK),
    )
    .values(
        status=TaskStatus.WAITING_INPUT.value,
        parked_at=bindparam("now"),
        wake_at=bindparam("wake_at"),
        worker=None,
        inbox=None,
        held_at=None,
    )
)

#: Queued again to resume: no longer parked, sent now through the outbox, which notes when
#: the broker took it (the step expires with no queue timeout: the task started long ago).
_UNPARK = (
    sql.tasks.update()
    .where(sql.tasks.c.id == bindparam("task_id"), may_move(TaskStatus.QUEUED, Operation.UNPARK))
    .values(
        status=TaskStatus.QUEUED.value,
        parked_at=None,
        wake_at=None,
        worker=None,
        inbox=None,
        held_at=None,
        expires_at=None,
        dispatched_at=bindparam("now"),
        published_at=None,
    )
)

_UNPARK_PARKED = _UNPARK.where(sql.tasks.c.parked_at.is_not(None))

#: A task parked, still waiting (one cancelled or timed out while parked keeps its marks).
_PARKED = and_(
    sql.tasks.c.parked_at.is_not(None), sql.tasks.c.status == TaskStatus.WAITING_INPUT.value
)
#: Parked tasks whose wait for an event timed out by ``now``.
_WAKING = (
    select(sql.tasks.c.id)
    .where(_PARKED, sql.tasks.c.wake_at <= bindparam("now"))
    .order_by(sql.tasks.c.wake_at)
    .limit(sql.SWEEP_BATCH)
    .with_for_update(skip_locked=True)
)
_NEXT_WAKE = select(func.min(sql.tasks.c.wake_at)).where(_PARKED)

_TASK_TO_RESUME = sql.with_first_step().where(sql.tasks.c.id == bindparam("task_id"))


def _inputs_taken(conn: Connection, task_id: str, run: int) -> int:
    """The number of the last event sent in that the journal of the task's ``run`` includes
    (its snapshot's, or a tick's); -1 for none."""
    params = {"task_id": task_id, "run": run}
    of_run = (
        _checkpoints.c.task_id == bindparam("task_id"),
        _checkpoints.c.run == bindparam("run"),
    )
    in_snapshot = conn.scalar(select(_checkpoints.c.inputs).where(*of_run), params)
    in_ticks = conn.scalar(
        select(func.max(_ticks.c.input_seq)).where(
            _ticks.c.task_id == bindparam("task_id"), _ticks.c.run == bindparam("run")
        ),
        params,
    )
    return max(number for number in (in_snapshot, in_ticks, -1) if number is not None)


#: An event sent in after number ``taken``.
_ANSWER_AFTER = select(
    exists().where(
        sql.events.c.task_id == bindparam("task_id"),
        sql.events.c.direction == EventDirection.IN.value,
        sql.events.c.seq > bindparam("taken"),
    )
)


class Parking:
    """The parking operations of :class:`~app.control.lifecycle.operations.Lifecycle`."""

    _db: Database
    _attempts: Attempts

    def park(self, message: StepFinished) -> RunStep | None:
        """A durable run was let go while it waited for input: park its task, or, if an
        answer its journal lacks is already there, queue it again; the step to send then."""
        wake_at = None if message.wake_at is None else from_timestamp(message.wake_at)
        params = {
            "task_id": message.task_id,
            "p_run": message.run,
            "now": utcnow(),
            "wake_at": wake_at,
        }
        with self._db.connect() as conn:
            # (A report from before runs were numbered names the task's current run.)
            run = message.run or conn.scalar(sql.TASK_RUN, {"task_id": message.task_id}) or 0
            taken = _inputs_taken(conn, message.task_id, run)
            answered = conn.scalar(_ANSWER_AFTER, {"task_id": message.task_id, "taken": taken})
            # The run ended (parked): the answer's run is the task's next attempt.
            run = Run.finished(message)
            if run is not None:
                self._attempts.record(conn, run)
            if answered:
                return self._unpark(conn, message.task_id)
            conn.execute(_PARK, params)
        return None

    def wake_parked(self, now: dt.datetime) -> list[RunStep]:
        """Queue again each parked task whose wait for an event timed out by ``now`` (the
        run, restored, arms the wait's timer again, and it fires at once); their steps, to
        send."""
        steps: list[RunStep] = []
        with self._db.connect() as conn:
            for task_id in conn.scalars(_WAKING, {"now": now}).all():
                step = self._unpark(conn, task_id, parked_only=True)
                if step is not None:
                    steps.append(step)
        return steps

    def next_wake(self) -> dt.datetime | None:
        """When the next parked task's wait times out, if any does."""
        with self._db.peek() as conn:
            return conn.scalar(_NEXT_WAKE)

    def _unpark(
        self, conn: Connection, task_id: str, *, parked_only: bool = False
    ) -> RunStep | None:
        """Queue a parked task (or, not ``parked_only``, one being let go) again; its step,
        to send."""
        unpark = _UNPARK_PARKED if parked_only else _UNPARK
        if not conn.execute(unpark, {"task_id": task_id, "now": utcnow()}).rowcount:
            return None
        return first_step_again(conn, conn.execute(_TASK_TO_RESUME, {"task_id": task_id}).one())
