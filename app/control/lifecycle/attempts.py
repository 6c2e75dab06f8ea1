"""Attempts: the lifecycle's record of each run of a task, written from its workers' reports.

The identity rule. Delivery is at least once and reports arrive in any order (a finish may
overtake its start, or carry it: ``StepFinished.started_reported``), so an attempt is known
by what its worker sends in every report of the run: the task, the worker's name and the time
the run began (``StepStarted.at``, repeated as ``StepFinished.started_at``). That triple is
unique in ``task_attempts``, and every write is keyed by it:

- the first report of a run to arrive, start or finish, inserts its row; a report of a run
  already known inserts nothing (``ON CONFLICT DO NOTHING`` on the triple);
- the number, ``attempt``, is given once, at that insert: the task's ``attempts`` count plus
  one, read with the task row locked and raised in the same transaction (or statement), so
  numbers follow the order in which runs became known, without gaps or repeats, and
  ``tasks.attempts`` always equals the task's number of rows;
- a finish fills in the end (``finished_at``, ``outcome``, ``error``) of a run that has
  none, or that the control plane had marked ``lost``: the worker's own word beats a guess; a
  repeated finish changes nothing;
- a run that has not reported its end is marked ``lost`` when a run of the task that began
  later is recorded, or when the task is queued again (``requeue``), since nothing will
  wait for it any more.

A report without a worker (the control plane failing a task it could not send) records no
attempt. On PostgreSQL a quick run's finish (its start carried with it) records its attempt
in the statement that stores its outcome, so ``tasks/run`` makes no extra round trip.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    CTE,
    JSON,
    ColumnElement,
    Connection,
    Insert,
    Update,
    bindparam,
    func,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from app.control.lifecycle.guards import may_move
from app.models import AttemptOutcome, Operation, Task, TaskAttempt, TaskStatus
from app.models.base import UTCDateTime, from_timestamp, table_of, utcnow
from workers.protocol import StepFinished, StepStarted

tasks = table_of(Task)
attempts = table_of(TaskAttempt)

#: The error of a run marked lost because a later run of its task began.
SUPERSEDED = {
    "type": "AttemptLost",
    "message": "a later run of the task began before this one reported its end",
}
#: The error of a run marked lost because its task was queued again.
REQUEUED = {
    "type": "AttemptLost",
    "message": "the task was queued again before this run reported its end",
}

#: The error of a run marked lost because its worker's lease ran out (see ``app.control.leases``).
LEASE_EXPIRED = {
    "type": "AttemptLost",
    "message": "its worker's lease ran out before this run reported its end",
}

#: The columns an attempt's first report fills in, in order.
_COLUMNS = ("task_id", "attempt", "worker", "started_at", "finished_at", "outcome", "error")
_KEY = [attempts.c.task_id, attempts.c.worker, attempts.c.started_at]


@dataclass(frozen=True)
class Run:
    """A run of a task as one report names it, with its end if the report is its last."""

    task_id: str
    worker: str
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    outcome: AttemptOutcome | None = None
    error: dict[str, Any] | None = None

    @classmethod
    def started(cls, message: StepStarted) -> Run | None:
        """The run a start report names (None without a worker)."""
        if not message.worker:
            return None
        return cls(message.task_id, message.worker, from_timestamp(message.at))

    @classmethod
    def finished(cls, message: StepFinished) -> Run | None:
        """The run an end report names, with its end (None without a worker)."""
        if not message.worker:
            return None
        return cls(
            message.task_id,
            message.worker,
            from_timestamp(message.started_at),
            from_timestamp(message.at),
            _outcome(message),
            message.error,
        )

    def params(self, number: int = 0) -> dict[str, Any]:
        """The bound parameters of this module's statements for this run."""
        return {
            "p_task_id": self.task_id,
            "p_attempt": number,
            "p_worker": self.worker,
            "p_started_at": self.started_at,
            "p_finished_at": self.finished_at,
            "p_outcome": None if self.outcome is None else self.outcome.value,
            "p_error": self.error,
            **lost_params(SUPERSEDED),
        }


def _open() -> ColumnElement[bool]:
    return attempts.c.outcome.is_(None)


def _lost(reason: str) -> dict[str, Any]:
    """The values that mark a run lost, the reason's error bound as ``reason``."""
    return {
        "outcome": AttemptOutcome.LOST.value,
        "finished_at": bindparam("p_lost_at", type_=UTCDateTime()),
        "error": bindparam(reason, type_=JSON),
    }


#: The task's count of attempts, its row locked until the transaction ends.
_LOCK_TASK = select(tasks.c.attempts).where(tasks.c.id == bindparam("p_task_id")).with_for_update()
_COUNT = (
    tasks.update().where(tasks.c.id == bindparam("p_task_id")).values(attempts=tasks.c.attempts + 1)
)
#: A finish of a known run fills in its end, unless it has one from its worker already.
_END = (
    attempts.update()
    .where(
        attempts.c.task_id == bindparam("p_task_id"),
        attempts.c.worker == bindparam("p_worker"),
        attempts.c.started_at == bindparam("p_started_at"),
        or_(_open(), attempts.c.outcome == AttemptOutcome.LOST.value),
    )
    .values(
        finished_at=bindparam("p_finished_at"),
        outcome=bindparam("p_outcome"),
        error=bindparam("p_error"),
    )
)
_LATEST = (
    select(func.max(attempts.c.started_at))
    .where(attempts.c.task_id == bindparam("p_task_id"))
    .scalar_subquery()
)
#: Runs that began before the task's latest one and never reported an end are lost.
_SUPERSEDE = (
    attempts.update()
    .where(attempts.c.task_id == bindparam("p_task_id"), _open(), attempts.c.started_at < _LATEST)
    .values(**_lost("p_lost_error"))
)
#: With a new run whose start this same statement stores: the runs that began before it.
_SUPERSEDE_BEFORE = (
    attempts.update()
    .where(
        attempts.c.task_id == bindparam("p_task_id"),
        _open(),
        attempts.c.started_at < bindparam("p_started_at"),
    )
    .values(**_lost("p_lost_error"))
)

#: Tasks queued again have their unfinished runs marked lost (see ``statements.REQUEUE_LOST``).
LOSE_REQUEUED = (
    attempts.update()
    .where(
        _open(),
        attempts.c.task_id.in_(
            select(tasks.c.id).where(
                may_move(TaskStatus.QUEUED, Operation.REQUEUE), tasks.c.dispatched_at.is_not(None)
            )
        ),
    )
    .values(**_lost("p_lost_error"))
)


#: A task recovered from a worker whose lease ran out has its unfinished runs marked lost.
LOSE_RECOVERED = (
    attempts.update()
    .where(_open(), attempts.c.task_id == bindparam("p_task_id"))
    .values(**_lost("p_lost_error"))
)


def _first_report(values: Any) -> Any:
    """``values`` as the select of an attempt's first report."""
    return select(
        *values,
        bindparam("p_worker", type_=attempts.c.worker.type),
        bindparam("p_started_at", type_=UTCDateTime()),
        bindparam("p_finished_at", type_=UTCDateTime()),
        bindparam("p_outcome", type_=attempts.c.outcome.type),
        bindparam("p_error", type_=JSON),
    )


class Attempts:
    """The attempt statements of one database, and how a report writes them."""

    def __init__(self, dialect: str) -> None:
        self._dialect = dialect
        number = (
            bindparam("p_task_id", type_=tasks.c.id.type),
            bindparam("p_attempt", type_=attempts.c.attempt.type),
        )
        self._add: Insert = (
            self.insert()
            .from_select(_COLUMNS, _first_report(number))
            .on_conflict_do_nothing(index_elements=_KEY)
            .returning(attempts.c.attempt)
        )

    def insert(self) -> postgresql.Insert | sqlite.Insert:
        """An INSERT into ``task_attempts`` in this database's dialect."""
        return (postgresql if self._dialect == "postgresql" else sqlite).insert(attempts)

    def record(self, conn: Connection, run: Run) -> None:
        """Record what ``run``'s report says, once whatever the deliveries (see the module's
        rule), in the caller's transaction."""
        count = conn.scalar(_LOCK_TASK, {"p_task_id": run.task_id})
        if count is None:
            return  # the task is gone
        params = run.params(count + 1)
        if conn.execute(self._add, params).first() is not None:
            conn.execute(_COUNT, params)
            conn.execute(_SUPERSEDE, params)
        elif run.outcome is not None:
            conn.execute(_END, params)

    def add_new(self, conn: Connection, run: Run, number: int) -> None:
        """Record ``run``, known to be new, as attempt ``number`` (which the caller counted
        on the task already), in the caller's transaction."""
        params = run.params(number)
        conn.execute(self._add, params)
        conn.execute(_SUPERSEDE_BEFORE, params)

    def in_finish(self, done: CTE) -> list[CTE]:
        """PostgreSQL: the CTEs that record a quick run's attempt in its finish statement,
        given ``done``, the CTE of the finished task's ``id`` and new ``attempts``."""
        add = (
            postgresql.insert(attempts)
            .from_select(_COLUMNS, _first_report((done.c.id, done.c.attempts)))
            .on_conflict_do_nothing(index_elements=_KEY)
        )
        lose: Update = _SUPERSEDE_BEFORE.where(attempts.c.task_id.in_(select(done.c.id)))
        return [add.cte("attempt"), lose.cte("superseded")]


def lost_params(reason: dict[str, Any]) -> dict[str, Any]:
    """The parameters that mark runs lost now, for ``reason`` (:data:`SUPERSEDED` or
    :data:`REQUEUED`)."""
    return {"p_lost_at": utcnow(), "p_lost_error": reason}


def _outcome(message: StepFinished) -> AttemptOutcome:
    """How a run ended, by its end report: as it went, stopped (cancelled, timed out), or
    let go while it waited (parked)."""
    if message.parked:
        return AttemptOutcome.PARKED
    if message.stopped is not None:
        try:
            return AttemptOutcome(message.stopped)
        except ValueError:
            return AttemptOutcome.FAILED
    return AttemptOutcome.SUCCEEDED if message.ok else AttemptOutcome.FAILED
