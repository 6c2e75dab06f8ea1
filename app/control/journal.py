"""Durable tasks' journals: stored as workers send them, read back when a run resumes.

Workers send a durable run's ticks over the broker (``JournalWritten``, see
``workers.durable``); this module writes them, and is the only one that does. Delivery is at
least once and two control-plane consumers may take two messages of one run side by side,
so every write is idempotent: ticks and steps are keyed by their number, the checkpoint's
state only moves forward (``state_through``), the count of events sent in that the journal
includes only grows, and a snapshot replaces the ticks before it only if it is newer. A
message of a run that is not the task's current one (a retry started over) changes nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    CTE,
    JSON,
    Boolean,
    ColumnElement,
    Connection,
    DateTime,
    Insert,
    Integer,
    Select,
    String,
    Text,
    and_,
    bindparam,
    case,
    column,
    exists,
    func,
    literal,
    null,
    select,
    true,
)
from sqlalchemy.dialects import postgresql

from app.control.dispatch import Dispatcher
from app.db import Database
from app.models import Checkpoint, Event, EventDirection, JournalTick, Task, TaskStep
from app.models.base import from_timestamp, table_of, utcnow
from workers.protocol import JournalReplay, JournalWanted, JournalWritten

_tasks = table_of(Task)
_events = table_of(Event)
_ticks = table_of(JournalTick)
_checkpoints = table_of(Checkpoint)
_steps = table_of(TaskStep)

#: "Not read yet" (a row read may be None).
_UNREAD = object()
_CURRENT_RUN = select(_tasks.c.run).where(_tasks.c.id == bindparam("task_id"))
_CHECKPOINT = select(_checkpoints).where(_checkpoints.c.task_id == bindparam("task_id"))
#: The checkpoint, locked: one task's messages are written one at a time (not its task's row,
#: which its run's other reports update meanwhile).
_CHECKPOINT_LOCKED = _CHECKPOINT.with_for_update()
_OF_TASK = _ticks.c.task_id == bindparam("task_id")
_NEXT_EVENT = select(func.coalesce(func.max(_events.c.seq) + 1, 0)).where(
    _events.c.task_id == bindparam("task_id"), _events.c.direction == EventDirection.OUT.value
)
_INPUTS_AFTER = (
    select(_events.c.seq, _events.c.data)
    .where(
        _events.c.task_id == bindparam("task_id"),
        _events.c.direction == EventDirection.IN.value,
        _events.c.seq > bindparam("after"),
    )
    .order_by(_events.c.seq)
)
#: The message's state and waits are newer than the checkpoint's (see ``_advance``).
_THROUGH = bindparam("new_through", type_=Integer)
_HAS_STATE = bindparam("has_state", type_=Boolean)
_HAS_WAITERS = bindparam("has_waiters", type_=Boolean)
_NEWER = _checkpoints.c.state_through < _THROUGH
_NEW_STATE = and_(_HAS_STATE, _NEWER)
_NEW_WAITERS = and_(_HAS_WAITERS, _NEWER)
_STATE = bindparam("new_state", type_=_checkpoints.c.state.type)
_WAITERS = bindparam("new_waiters", type_=_checkpoints.c.waiters.type)
_NOW = bindparam("now", type_=_checkpoints.c.updated_at.type)
#: A new checkpoint for a message of the task's current run, first attempt (epoch 0).
_NEW_CHECKPOINT = select(
    _tasks.c.id,
    _tasks.c.run,
    literal(0),
    null(),
    literal(0),
    case((_HAS_STATE, _STATE), else_=null()),
    case((_HAS_STATE, _THROUGH), else_=-1),
    literal(-1),
    case((_HAS_WAITERS, _WAITERS), else_=null()),
    _NOW,
).where(
    _tasks.c.id == bindparam("of_task"),
    _tasks.c.run == bindparam("of_run"),
    bindparam("of_epoch", type_=Integer) == 0,
)
_CHECKPOINT_COLUMNS = (
    "task_id",
    "run",
    "epoch",
    "snapshot",
    "journal_seq",
    "state",
    "state_through",
    "inputs",
    "waiters",
    "updated_at",
)


def _advance(db: Database) -> Any:
    """The statement for a message that brings no snapshot (nearly all): it makes the
    checkpoint of the run's first message, or, for a message of the checkpoint's run and
    epoch, locks the checkpoint and keeps the message's state and waits if they are newer;
    either way it answers where the journal starts. No row: another case, for
    :meth:`Journal.record` (the task gone or started over, an earlier run's checkpoint to
    drop, an attempt's epoch to check)."""
    insert = db.insert_dialect(_checkpoints).from_select(_CHECKPOINT_COLUMNS, _NEW_CHECKPOINT)
    return insert.on_conflict_do_update(
        index_elements=[_checkpoints.c.task_id],
        set_={
            "state": case((_NEW_STATE, _STATE), else_=_checkpoints.c.state),
            "state_through": case((_NEW_STATE, _THROUGH), else_=_checkpoints.c.state_through),
            "waiters": case((_NEW_WAITERS, _WAITERS), else_=_checkpoints.c.waiters),
            "updated_at": _NOW,
        },
        where=and_(
            _checkpoints.c.run == bindparam("of_run"),
            _checkpoints.c.epoch == bindparam("of_epoch"),
        ),
    ).returning(_checkpoints.c.journal_seq)


def _step_recordset(name: str) -> Any:
    """PostgreSQL: the steps in the JSON array bound as ``name`` (see :func:`_json_step_rows`),
    as rows of a derived table ``step``."""
    return (
        func.json_to_recordset(bindparam(name, type_=JSON))
        .table_valued(
            column("seq", Integer),
            column("step", String),
            column("input", String),
            column("input_key", String),
            column("started_at", DateTime(timezone=True)),
            column("ended_at", DateTime(timezone=True)),
            column("outcome", String),
        )
        .render_derived(name="step", with_types=True)
    )


def _advance_at_once(advance: Any) -> Select[Any]:
    """PostgreSQL: ``advance`` and the inserts of the message's ticks (``p_ticks``, those
    from where the journal starts) and steps (``p_steps``), as one statement that commits on
    its own: one round trip where a transaction takes five, and the checkpoint's lock is held
    for that statement only. Nothing is inserted if ``advance`` changed no row."""
    advanced = advance.cte("advanced")
    ticks = (
        func.json_to_recordset(bindparam("p_ticks", type_=JSON))
        .table_valued(column("seq", Integer), column("data", Text), column("input_seq", Integer))
        .render_derived(name="tick", with_types=True)
    )
    tick_rows = select(
        bindparam("of_task", type_=String),
        bindparam("of_run", type_=Integer),
        ticks.c.seq,
        ticks.c.data,
        ticks.c.input_seq,
        _NOW,
    ).select_from(advanced.join(ticks, ticks.c.seq >= advanced.c.journal_seq))
    store_ticks = postgresql.insert(_ticks).from_select(
        ("task_id", "run", "seq", "data", "input_seq", "created_at"), tick_rows
    )
    steps = _step_recordset("p_steps")
    step_rows = select(
        bindparam("of_task", type_=String), bindparam("of_run", type_=Integer), *steps.c
    ).select_from(advanced.join(steps, true()))
    store_steps = postgresql.insert(_steps).from_select(_STEP_COLUMNS, step_rows)
    return select(advanced.c.journal_seq).add_cte(
        store_ticks.on_conflict_do_nothing().cte("ticks"),
        store_steps.on_conflict_do_nothing().cte("steps"),
    )


#: The steps that end a run, with its outcome, are written unless another attempt of the run
#: took over (a later epoch): they need no lock on the checkpoint, and do not wait for the
#: run's earlier messages (see :class:`LastSteps`).
def _of_attempt(task: str, run: str, epoch: str) -> tuple[ColumnElement[bool], ...]:
    """The task ``task`` (a parameter's name) is in its run ``run``, and no attempt of it but
    ``epoch`` took over."""
    return (
        _tasks.c.id == bindparam(task, type_=String),
        _tasks.c.run == bindparam(run, type_=Integer),
        ~exists().where(
            _checkpoints.c.task_id == _tasks.c.id,
            _checkpoints.c.run == _tasks.c.run,
            _checkpoints.c.epoch != bindparam(epoch, type_=Integer),
        ),
    )


_LAST_STEP_ROW = select(
    _tasks.c.id,
    _tasks.c.run,
    bindparam("seq", type_=Integer),
    bindparam("step", type_=String),
    bindparam("input", type_=String),
    bindparam("input_key", type_=String),
    bindparam("started_at", type_=_steps.c.started_at.type),
    bindparam("ended_at", type_=_steps.c.ended_at.type),
    bindparam("outcome", type_=String),
).where(*_of_attempt("task_id", "run", "epoch"))
_STEP_COLUMNS = (
    "task_id",
    "run",
    "seq",
    "step",
    "input",
    "input_key",
    "started_at",
    "ended_at",
    "outcome",
)


def _last_steps_at_once() -> CTE:
    """PostgreSQL: :data:`_LAST_STEP_ROW` for the steps bound as ``last_steps``, as a CTE
    of the statement that records the run's outcome (see :class:`LastSteps`)."""
    last = _step_recordset("last_steps")
    rows = (
        select(_tasks.c.id, _tasks.c.run, *last.c)
        .select_from(_tasks.join(last, true()))
        .where(*_of_attempt("last_task", "last_run", "last_epoch"))
    )
    insert = postgresql.insert(_steps).from_select(_STEP_COLUMNS, rows).on_conflict_do_nothing()
    return insert.cte("last_steps")


_LAST_STEPS_AT_ONCE = _last_steps_at_once()


@dataclass(frozen=True)
class StepRecord:
    """One execution of a durable task's step that ended; ``attempt`` counts the executions
    of its step on its event so far (1 for the first)."""

    run: int
    seq: int
    step: str
    input: str
    attempt: int
    started_at: dt.datetime | None
    ended_at: dt.datetime
    outcome: str

    @property
    def duration(self) -> float | None:
        """Seconds it took, if its start is known."""
        if self.started_at is None:
            return None
        return max((self.ended_at - self.started_at).total_seconds(), 0.0)


class LastSteps:
    """The steps that go with a durable run's outcome (steps only, no ticks), written with
    it, as one (see ``Lifecycle.finish``): a client that sees the task ended lists them. They
    are written unless the task started over or another attempt of the run took over (a later
    epoch), and without the checkpoint's lock: the outcome does not wait for the run's
    earlier messages to be written."""

    #: PostgreSQL: the CTE that inserts them in the outcome's statement, bound by
    #: :meth:`params`.
    cte = _LAST_STEPS_AT_ONCE

    def __init__(self, insert: Insert, message: JournalWritten) -> None:
        self._insert = insert
        self._message = message

    def params(self) -> dict[str, Any]:
        """The parameters of :attr:`cte`."""
        message = self._message
        return {
            "last_task": message.task_id,
            "last_run": message.run,
            "last_epoch": message.epoch,
            "last_steps": _json_step_rows(message),
        }

    def write(self, conn: Connection) -> None:
        """Elsewhere (SQLite): insert them in the outcome's transaction."""
        conn.execute(self._insert, _step_rows(self._message, epoch=self._message.epoch))


class Journal:
    """Writes durable tasks' journals, and answers the workers that resume them."""

    def __init__(self, db: Database, dispatcher: Dispatcher) -> None:
        self._db = db
        self._dispatcher = dispatcher
        self._insert_tick = db.insert_ignoring_duplicates(_ticks)
        self._insert_checkpoint = db.insert_ignoring_duplicates(_checkpoints).returning(
            *_checkpoints.c
        )
        self._insert_step = db.insert_ignoring_duplicates(_steps)
        self._insert_last_step = db.insert_ignoring_duplicates(_steps).from_select(
            _STEP_COLUMNS, _LAST_STEP_ROW
        )
        self._advance = _advance(db)
        #: PostgreSQL writes such a message in that one statement (see ``_advance_at_once``).
        self._advance_at_once = (
            _advance_at_once(self._advance) if db.engine.dialect.name == "postgresql" else None
        )

    def record(self, message: JournalWritten) -> bool:
        """Store what a durable run journaled; False if its task is gone or has started
        over (a later run)."""
        if message.snapshot is None and self._advanced(message):
            return True
        key = {"task_id": message.task_id}
        with self._db.connect() as conn:
            row = conn.execute(_CHECKPOINT_LOCKED, key).first()
            if row is not None and row.run == message.run:
                checkpoint = Checkpoint(**row._mapping)
            elif conn.execute(_CURRENT_RUN, key).scalar() == message.run:
                checkpoint = self._checkpoint_of(conn, message.task_id, message.run, row)
            else:
                return False  # the task is gone, or has started over
            if message.epoch != checkpoint.epoch:
                return False  # an earlier attempt's (a lost worker's), or a later one's
            self._write(conn, message, checkpoint.journal_seq)
            self._update_checkpoint(conn, checkpoint, message)
        return True

    def _advanced(self, message: JournalWritten) -> bool:
        """Write a message that brings no snapshot, as nearly all do, if it is of the
        checkpoint's run and attempt or the run's first (see ``_advance``); False if it is
        another case, and nothing was written."""
        params = {
            "of_task": message.task_id,
            "of_run": message.run,
            "of_epoch": message.epoch,
            "has_state": message.state is not None,
            "new_state": message.state,
            "new_through": message.through,
            "has_waiters": message.waiters is not None,
            "new_waiters": message.waiters,
            "now": utcnow(),
        }
        if self._advance_at_once is not None:
            params["p_ticks"] = [
                {"seq": int(r[0]), "data": str(r[1]), "input_seq": r[2] if len(r) > 2 else None}
                for r in message.records
            ]
            params["p_steps"] = _json_step_rows(message)
            with self._db.single() as conn:
                return conn.execute(self._advance_at_once, params).first() is not None
        with self._db.connect() as conn:
            advanced = conn.execute(self._advance, params).first()
            if advanced is not None:
                self._write(conn, message, advanced.journal_seq)
            return advanced is not None

    def _write(self, conn: Connection, message: JournalWritten, journal_seq: int) -> None:
        """Insert the message's ticks (those the journal does not hold in its snapshot,
        numbered from ``journal_seq``) and its steps."""
        now = utcnow()
        rows = [
            {
                "task_id": message.task_id,
                "run": message.run,
                "seq": int(record[0]),
                "data": str(record[1]),
                "input_seq": record[2] if len(record) > 2 else None,
                "created_at": now,
            }
            for record in message.records
            if int(record[0]) >= journal_seq
        ]
        if rows:
            conn.execute(self._insert_tick, rows)
        if message.steps:
            conn.execute(self._insert_step, _step_rows(message))

    def last_steps(self, message: JournalWritten) -> LastSteps | None:
        """The steps that travel with a durable run's outcome (``StepFinished.journal``),
        to be written with it; None if it carries none."""
        return LastSteps(self._insert_last_step, message) if message.steps else None

    def _checkpoint_of(
        self, conn: Connection, task_id: str, run: int, locked: Any = _UNREAD
    ) -> Checkpoint:
        """The task's checkpoint of ``run``, locked; made (and the journal of earlier runs
        dropped) if there is none yet. ``locked`` is the checkpoint's row if the caller has
        just read it locked (None if there was none)."""
        key = {"task_id": task_id}
        row = conn.execute(_CHECKPOINT_LOCKED, key).first() if locked is _UNREAD else locked
        if row is not None and row.run == run:
            return Checkpoint(**row._mapping)
        if row is not None or run > 1:  # runs are numbered from 1: run 1 has no earlier one
            conn.execute(_ticks.delete().where(_OF_TASK, _ticks.c.run != run), key)
            conn.execute(
                _checkpoints.delete().where(
                    _checkpoints.c.task_id == task_id, _checkpoints.c.run != run
                )
            )
        fresh = {
            "task_id": task_id,
            "run": run,
            "epoch": 0,
            "snapshot": None,
            "journal_seq": 0,
            "state": None,
            "state_through": -1,
            "inputs": -1,
            "waiters": None,
            "updated_at": utcnow(),
        }
        made = conn.execute(self._insert_checkpoint, fresh).first()
        if made is not None:
            return Checkpoint(**made._mapping)
        # Two first messages of a run raced here: the other inserted it; read it locked.
        return Checkpoint(**conn.execute(_CHECKPOINT_LOCKED, key).one()._mapping)

    def _update_checkpoint(
        self, conn: Connection, checkpoint: Checkpoint, message: JournalWritten
    ) -> None:
        changes: dict[str, Any] = {}
        if message.state is not None and message.through > checkpoint.state_through:
            changes.update(state=message.state, state_through=message.through)
        if message.waiters is not None and message.through > checkpoint.state_through:
            changes["waiters"] = message.waiters
        snapshot = message.snapshot
        seq = int(snapshot.get("journal_seq") or 0) if snapshot is not None else 0
        if snapshot is not None and seq > checkpoint.journal_seq:
            # The snapshot stands for every tick before its number: compact (keeping which
            # events sent in those ticks applied).
            before = and_(_OF_TASK, _ticks.c.run == message.run, _ticks.c.seq < seq)
            key = {"task_id": message.task_id}
            applied = conn.execute(select(func.max(_ticks.c.input_seq)).where(before), key)
            changes.update(
                snapshot=snapshot,
                journal_seq=seq,
                inputs=max(checkpoint.inputs, applied.scalar() or -1),
            )
            conn.execute(_ticks.delete().where(before), key)
        if changes:
            conn.execute(
                _checkpoints.update()
                .where(_checkpoints.c.task_id == message.task_id)
                .values(**changes, updated_at=utcnow())
            )

    def replay(self, wanted: JournalWanted) -> JournalReplay:
        """What the run ``wanted`` names resumes from, as a new attempt of it: empty for a
        task that never ran (or has started over), else its snapshot, its ticks after it up
        to the first missing one, its state, and the events sent in that those do not
        include.

        Ticks past a gap (a later message recorded before an earlier one) are dropped, and
        the attempt gets the next epoch: messages of earlier attempts (a lost worker's, late)
        are not written any more, and the resumed run's ticks take their numbers."""
        key = {"task_id": wanted.task_id}
        with self._db.connect() as conn:
            next_seq = int(conn.execute(_NEXT_EVENT, key).scalar_one())
            if conn.execute(_CURRENT_RUN, key).scalar() != wanted.run:
                # Gone, or a run that is not the task's current one: it starts nothing here.
                return self._empty(wanted, next_seq, epoch=-1)
            checkpoint = self._checkpoint_of(conn, wanted.task_id, wanted.run)
            records: list[list[Any]] = []
            inputs = checkpoint.inputs
            for row in conn.execute(
                select(_ticks.c.seq, _ticks.c.data, _ticks.c.input_seq)
                .where(_OF_TASK, _ticks.c.run == wanted.run, _ticks.c.seq >= checkpoint.journal_seq)
                .order_by(_ticks.c.seq),
                key,
            ):
                if row.seq != checkpoint.journal_seq + len(records):
                    break
                records.append([row.seq, row.data])
                if row.input_seq is not None:
                    inputs = max(inputs, row.input_seq)
            end = checkpoint.journal_seq + len(records)
            conn.execute(
                _ticks.delete().where(_OF_TASK, _ticks.c.run == wanted.run, _ticks.c.seq >= end),
                key,
            )
            epoch = checkpoint.epoch + 1
            conn.execute(
                _checkpoints.update()
                .where(_checkpoints.c.task_id == wanted.task_id)
                .values(epoch=epoch, updated_at=utcnow())
            )
            pending = [
                [row.seq, json.dumps(row.data)]
                for row in conn.execute(_INPUTS_AFTER, {**key, "after": inputs})
            ]
        return JournalReplay(
            wanted=wanted.id,
            task_id=wanted.task_id,
            epoch=epoch,
            snapshot=checkpoint.snapshot,
            records=records,
            state=checkpoint.state,
            inputs=inputs,
            next_seq=next_seq,
            pending=pending,
            waiters=list(checkpoint.waiters or []),
        )

    @staticmethod
    def _empty(wanted: JournalWanted, next_seq: int, *, epoch: int) -> JournalReplay:
        return JournalReplay(
            wanted=wanted.id,
            task_id=wanted.task_id,
            epoch=epoch,
            snapshot=None,
            records=[],
            state=None,
            inputs=-1,
            next_seq=next_seq,
        )

    def answer(self, wanted: JournalWanted) -> None:
        """Send the journal to the worker that asked (see :meth:`replay`). If the broker
        refuses it, the worker gives up waiting and puts its step back in the queue."""
        self._dispatcher.deliver(wanted.inbox, self.replay(wanted))

    def steps(self, task_id: str) -> list[StepRecord]:
        """The steps of a durable task that ended, in the order they ended."""
        with self._db.read() as db:
            rows = db.connection().execute(
                select(_steps)
                .where(_steps.c.task_id == task_id)
                .order_by(_steps.c.run, _steps.c.seq)
            )
            attempts: Counter[tuple[str, str]] = Counter()
            listed = []
            for row in rows:
                attempts[(row.step, row.input_key)] += 1
                listed.append(
                    StepRecord(
                        run=row.run,
                        seq=row.seq,
                        step=row.step,
                        input=row.input,
                        attempt=attempts[(row.step, row.input_key)],
                        started_at=row.started_at,
                        ended_at=row.ended_at,
                        outcome=row.outcome,
                    )
                )
            return listed


def _iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _json_step_rows(message: JournalWritten) -> list[dict[str, Any]]:
    """The rows of the steps a message lists, as a JSON array (see :func:`_step_recordset`)."""
    return [
        {**row, "started_at": _iso(row["started_at"]), "ended_at": _iso(row["ended_at"])}
        for row in _step_rows(message)
    ]


def _step_rows(message: JournalWritten, **extra: Any) -> list[dict[str, Any]]:
    """The rows of the steps a message lists (see ``StepRecord``)."""
    rows = []
    for step in message.steps:
        started = step.get("started_at")
        rows.append(
            {
                "task_id": message.task_id,
                "run": message.run,
                "seq": int(step["seq"]),
                "step": str(step["step"])[:200],
                "input": str(step.get("input", ""))[:500],
                "input_key": hashlib.sha256(str(step.get("input_key", "")).encode()).hexdigest(),
                "started_at": None if started is None else from_timestamp(float(started)),
                "ended_at": from_timestamp(float(step["ended_at"])),
                "outcome": str(step.get("outcome", ""))[:300],
                **extra,
            }
        )
    return rows
