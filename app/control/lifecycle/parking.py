"""Parking: a durable task waits for input with no worker, and its answer sends it again.

A durable run that waits for input is let go by its worker (see ``workers.durable``); its
task stays ``waiting_input``, marked parked (``tasks.parked_at``), held by nobody: no lease
runs out, no step of it waits in a queue. An event sent in unparks it: the task is queued
and its step sent again, and the run resumes from its journal on whichever worker takes it.
An answer that arrived while the run was being let go, and that its journal does not
include, unparks it at once.
"""

from __future__ import annotations

from sqlalchemy import Connection, and_, bindparam, exists, func, select

from app.control.lifecycle import statements as sql
from app.control.lifecycle.guards import may_move
from app.control.lifecycle.statements import same_run
from app.control.lifecycle.steps import first_step_again
from app.db import Database
from app.models import Checkpoint, EventDirection, Operation, TaskStatus
from app.models.base import table_of, utcnow
from workers.protocol import RunStep, StepFinished

_checkpoints = table_of(Checkpoint)

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
        worker=None,
        inbox=None,
        held_at=None,
        expires_at=None,
        dispatched_at=bindparam("now"),
        published_at=None,
    )
)

_UNPARK_PARKED = _UNPARK.where(sql.tasks.c.parked_at.is_not(None))

_TASK_TO_RESUME = sql.with_first_step().where(sql.tasks.c.id == bindparam("task_id"))

#: An event sent in that the task's journal (of its current run) does not include.
_ANSWER_WAITING = exists().where(
    sql.events.c.task_id == bindparam("task_id"),
    sql.events.c.direction == EventDirection.IN.value,
    sql.events.c.seq
    > func.coalesce(
        select(_checkpoints.c.inputs)
        .where(
            and_(
                _checkpoints.c.task_id == sql.events.c.task_id,
                _checkpoints.c.run == sql.tasks.c.run,
            )
        )
        # (both outer tables: left to itself, the events table would be joined in again, the
        # checkpoints of every task matched, and PostgreSQL refuse the many rows)
        .correlate(sql.tasks, sql.events)
        .scalar_subquery(),
        -1,
    ),
)


class Parking:
    """The parking operations of :class:`~app.control.lifecycle.operations.Lifecycle`."""

    _db: Database

    def park(self, message: StepFinished) -> RunStep | None:
        """A durable run was let go while it waited for input: park its task, or, if an
        answer its journal lacks is already there, queue it again; the step to send then."""
        params = {"task_id": message.task_id, "p_run": message.run, "now": utcnow()}
        with self._db.connect() as conn:
            answered = conn.execute(
                select(_ANSWER_WAITING).where(sql.tasks.c.id == bindparam("task_id")), params
            ).scalar()
            if answered:
                return self._unpark(conn, message.task_id)
            conn.execute(_PARK, params)
        return None

    def _unpark(
        self, conn: Connection, task_id: str, *, parked_only: bool = False
    ) -> RunStep | None:
        """Queue a parked task (or, not ``parked_only``, one being let go) again; its step,
        to send."""
        unpark = _UNPARK_PARKED if parked_only else _UNPARK
        if not conn.execute(unpark, {"task_id": task_id, "now": utcnow()}).rowcount:
            return None
        return first_step_again(conn, conn.execute(_TASK_TO_RESUME, {"task_id": task_id}).one())
