"""Apply service workers' reports to the database; every method is idempotent.

This is the control plane's hot path (every task passes here), so it uses Core statements
built once, with bound parameters, rather than ORM objects.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Connection,
    DateTime,
    Integer,
    Row,
    Select,
    String,
    Update,
    bindparam,
    case,
    column,
    func,
    literal,
    or_,
    select,
    true,
)
from sqlalchemy.dialects import postgresql, sqlite

from app.control.dispatch import Dispatcher
from app.control.outbox import Outbox
from app.control.routing import first_step
from app.control.turns import pass_turn, session_context
from app.control.waiter import Outcome, TaskWaiter
from app.db import Database
from app.errors import Unavailable
from app.models import Event, EventDirection, Task, TaskStatus, Worker
from app.models.base import from_timestamp, table_of
from workers.protocol import (
    DeliverEvent,
    Heartbeat,
    RunStep,
    StepEvent,
    StepFinished,
    StepStarted,
)

_tasks = table_of(Task)
_events = table_of(Event)
_workers = table_of(Worker)


def _status_in(statuses: Iterable[TaskStatus]) -> ColumnElement[bool]:
    """``status IN (...)`` written as comparisons: SQLAlchemy re-renders an IN list's SQL on
    every execution, and these statements run for every task."""
    return or_(*(_tasks.c.status == status.value for status in statuses))


_TASK_EXISTS = select(_tasks.c.id).where(_tasks.c.id == bindparam("task_id"))

_COUNT_ATTEMPT = (
    _tasks.update()
    .where(_tasks.c.id == bindparam("task_id"))
    .values(
        attempts=_tasks.c.attempts + 1,
        worker=bindparam("p_worker"),
        started_at=bindparam("p_started_at"),
        # Reports may arrive in any order: a start recorded after the task's question
        # (an InputRequiredEvent) must not hide that the task waits for input.
        status=case(
            (
                _status_in([TaskStatus.QUEUED, TaskStatus.RUNNING]),
                TaskStatus.RUNNING.value,
            ),
            else_=_tasks.c.status,
        ),
    )
)

_FINISH = (
    _tasks.update()
    .where(
        _tasks.c.id == bindparam("task_id"),
        # Succeeded and failed are both reached from any status that is not final.
        _status_in(s for s in TaskStatus if not s.terminal),
    )
    .values(
        status=bindparam("p_status"),
        result=bindparam("p_result"),
        error=bindparam("p_error"),
        event_count=bindparam("p_event_count"),
        finished_at=bindparam("p_finished_at"),
    )
)

_SET_INBOX = (
    _tasks.update().where(_tasks.c.id == bindparam("task_id")).values(inbox=bindparam("p_inbox"))
)
_INPUTS = (
    select(_events.c.seq, _events.c.data)
    .where(
        _events.c.task_id == bindparam("task_id"),
        _events.c.direction == EventDirection.IN.value,
    )
    .order_by(_events.c.seq)
)
_WAIT_FOR_INPUT = (
    _tasks.update()
    .where(
        _tasks.c.id == bindparam("task_id"),
        _status_in(TaskStatus.WAITING_INPUT.sources()),
    )
    .values(status=TaskStatus.WAITING_INPUT.value)
)

_START_AND_FINISH = _FINISH.values(
    attempts=_tasks.c.attempts + 1,
    worker=bindparam("p_worker"),
    started_at=bindparam("p_started_at"),
)


#: The columns of a stored event, in the order its rows are written.
_EVENT_COLUMNS = ("task_id", "direction", "seq", "type", "qualified_name", "data", "created_at")


def _finish_at_once(finish: Update) -> Select[Any]:
    """PostgreSQL: ``finish`` and the insert of the run's last events as one statement.

    The events come as one JSON array (``p_events``) and are stored only if the task row
    changed, as in the transaction that SQLite runs; the statement commits on its own, so
    recording an outcome is one round trip instead of four (BEGIN, UPDATE, INSERT, COMMIT).
    """
    done = finish.returning(_tasks.c.id, _tasks.c.session_id).cte("done")
    last = (
        func.json_to_recordset(bindparam("p_events", type_=JSON))
        .table_valued(
            column("seq", Integer),
            column("type", String),
            column("qualified_name", String),
            column("data", JSON),
            column("created_at", DateTime(timezone=True)),
        )
        .render_derived(name="last", with_types=True)
    )
    rows = select(done.c.id, literal(EventDirection.OUT.value), *last.c).select_from(
        done.join(last, true())
    )
    store = postgresql.insert(_events).from_select(_EVENT_COLUMNS, rows).on_conflict_do_nothing()
    return select(done.c.session_id).add_cte(store.cte("stored"))


class Recorder:
    """Writes task progress; delivery is at least once, so repeats must change nothing."""

    def __init__(
        self, db: Database, waiter: TaskWaiter, dispatcher: Dispatcher, outbox: Outbox
    ) -> None:
        self._db = db
        self._waiter = waiter
        self._dispatcher = dispatcher
        self._outbox = outbox
        self._insert_event = db.insert_ignoring_duplicates(_events)
        self._at_once = (
            {s: _finish_at_once(s) for s in (_FINISH, _START_AND_FINISH)}
            if db.engine.dialect.name == "postgresql"
            else None
        )

    def started(self, message: StepStarted) -> None:
        """A worker took the task: count the attempt, mark it running if it still can be,
        and send it the events clients sent in before anyone knew where it ran."""
        with self._db.connect() as conn:
            _count_attempt(conn, message.task_id, message.worker, message.at)
            conn.execute(_SET_INBOX, {"task_id": message.task_id, "p_inbox": message.inbox})
            inputs = conn.execute(_INPUTS, {"task_id": message.task_id}).all()
        for seq, data in inputs:
            self._dispatcher.deliver(
                message.inbox,
                DeliverEvent(task_id=message.task_id, seq=seq, event=json.dumps(data)),
            )
        self._waiter.notify(message.task_id)

    def event(self, message: StepEvent) -> None:
        """Store one streamed event (once, whatever the number of deliveries); an
        ``InputRequiredEvent`` marks the task as waiting for input."""
        with self._db.connect() as conn:
            if conn.scalar(_TASK_EXISTS, {"task_id": message.task_id}) is None:
                return
            conn.execute(self._insert_event, _event_row(message))
            if message.event.get("input_required"):
                conn.execute(_WAIT_FOR_INPUT, {"task_id": message.task_id})
        self._waiter.notify(message.task_id)

    def finished(self, message: StepFinished) -> None:
        """Record the outcome with the run's last events, unless the task already ended."""
        status = TaskStatus.SUCCEEDED if message.ok else TaskStatus.FAILED
        params = {
            "task_id": message.task_id,
            "p_status": status.value,
            "p_result": message.result,
            "p_error": message.error,
            "p_event_count": message.event_count,
            "p_finished_at": from_timestamp(message.at),
        }
        if message.started_reported:
            statement = _FINISH
        else:
            # A quick run: its start is recorded with its end, in the same statement.
            statement = _START_AND_FINISH
            params["p_worker"] = message.worker
            params["p_started_at"] = from_timestamp(message.started_at)
        events = [_event_row(StepEvent.decode(event)) for event in message.events]
        following = None
        # A session's next task is handed on in the same transaction; a task on its own
        # needs none on PostgreSQL, where the outcome is a single statement.
        with self._db.connect() if message.keep_context else self._db.single() as conn:
            changed = self._store_outcome(conn, statement, params, events)
            if changed is not None and message.keep_context:
                following = self._hand_on(conn, changed.session_id, message)
        # Waiters in this process (the embedded mode) take the outcome as it was stored.
        outcome = Outcome(status.value, message.result, message.error) if changed else None
        self._waiter.notify(message.task_id, outcome)
        if following is not None:
            self._start(following)

    def _store_outcome(
        self, conn: Connection, finish: Update, params: dict[str, Any], events: list[dict[str, Any]]
    ) -> Row[Any] | None:
        """Apply ``finish`` and store the run's last events; returns the changed task's
        ``session_id``, in a row.

        No row changes when the task already ended (a redelivery: its events were stored the
        first time) or was deleted with its deployment; nothing is stored then.
        """
        if self._at_once is not None:
            params["p_events"] = [{**e, "created_at": e["created_at"].isoformat()} for e in events]
            return conn.execute(self._at_once[finish], params).first()
        changed = conn.execute(finish.returning(_tasks.c.session_id), params).first()
        if changed is not None:
            for event in events:
                conn.execute(self._insert_event, event)
        return changed

    def _hand_on(self, conn: Connection, session_id: str, message: StepFinished) -> RunStep | None:
        """Free the session (keeping the Context of a successful run) for its next task."""
        context = message.context if message.ok else None
        row = pass_turn(conn, session_id, message.task_id, context)
        if row is None:
            return None
        return first_step(
            row,
            row.deployment_name,
            row.version,
            context=session_context(conn, session_id),
            keep_context=True,
        )

    def _start(self, step: RunStep) -> None:
        """Send the next task of a session; if the broker refuses, fail it and go on."""
        try:
            self._outbox.send(step)
        except Unavailable as exc:
            self.finished(
                StepFinished(
                    task_id=step.task_id,
                    ok=False,
                    result=None,
                    error={"type": "DispatchError", "message": str(exc)},
                    event_count=0,
                    events=[],
                    worker="",
                    started_at=time.time(),
                    started_reported=True,
                    at=time.time(),
                    keep_context=True,
                )
            )

    def heartbeat(self, message: Heartbeat) -> None:
        """Note that a worker is alive (or, with ``gone``, that it stopped)."""
        with self._db.connect() as conn:
            _upsert_worker(conn, message, self._db.engine.dialect.name)


def _upsert_worker(conn: Connection, message: Heartbeat, dialect: str) -> None:
    values = {
        "name": message.worker,
        "host": message.host,
        "pid": message.pid,
        "queues": message.queues,
        "deployments": message.deployments,
        "started_at": from_timestamp(message.started_at),
        "last_seen": from_timestamp(message.at),
        "stopped_at": from_timestamp(message.at) if message.gone else None,
    }
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(_workers).values(values)
    changed = {k: v for k, v in values.items() if k != "name"}
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=[_workers.c.name],
            set_=changed,
            # Heartbeats may arrive out of order: never let an older one win.
            where=_workers.c.last_seen <= changed["last_seen"],
        )
    )


def _count_attempt(conn: Connection, task_id: str, worker: str, at: float) -> None:
    """One more attempt by ``worker``; the task becomes running unless it already moved on."""
    conn.execute(
        _COUNT_ATTEMPT,
        {"task_id": task_id, "p_worker": worker, "p_started_at": from_timestamp(at)},
    )


def _event_row(message: StepEvent) -> dict[str, Any]:
    event: dict[str, Any] = message.event
    return {
        "task_id": message.task_id,
        "direction": EventDirection.OUT.value,
        "seq": message.seq,
        "type": str(event.get("type", "Event"))[:200],
        "qualified_name": str(event.get("qualified_name", ""))[:500],
        "data": event.get("data", {}),
        "created_at": from_timestamp(message.at),
    }
