"""The task lifecycle's state machine on a migrated SQLite database: every operation moves a
task exactly where the transition table lets it, and nowhere else."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, update

import migrations
from app.control.lifecycle import Lifecycle, NewTask
from app.db import Database
from app.errors import Conflict
from app.models import Deployment, Event, Operation, Session, Task, TaskStatus, Worker
from app.models.base import table_of, utcnow
from app.models.task import MOVES, TRANSITIONS
from workers.protocol import StepEvent, StepFinished, StepStarted

Q, R, W = TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.WAITING_INPUT
S, F, C = TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED
Y, T = TaskStatus.RETRYING, TaskStatus.TIMED_OUT

#: Every move the lifecycle may make, (from, to, by), written out on its own so that a change
#: to the table shows here.
ALLOWED = frozenset(
    {
        (Q, R, Operation.START),
        (R, R, Operation.START),
        (Q, W, Operation.AWAIT_INPUT),
        (R, W, Operation.AWAIT_INPUT),
        (W, R, Operation.RESUME),
        *((source, end, Operation.FINISH) for source in (Q, R, W) for end in (S, F, Y)),
        *((source, C, Operation.CANCEL) for source in (Q, R, W, Y)),
        *((source, T, Operation.TIME_OUT) for source in (Q, R, W)),
        (Y, Q, Operation.RETRY_DUE),
        (Q, Q, Operation.REQUEUE),
        (R, Q, Operation.REQUEUE),
        (W, Q, Operation.REQUEUE),
        (R, Q, Operation.RECOVER),
        (W, Q, Operation.RECOVER),
        (F, Q, Operation.RETRY),
        (C, Q, Operation.RETRY),
        (T, Q, Operation.RETRY),
        (R, W, Operation.PARK),
        (W, W, Operation.PARK),
        (R, Q, Operation.UNPARK),
        (W, Q, Operation.UNPARK),
    }
)

_tasks = table_of(Task)
_events = table_of(Event)
_workers = table_of(Worker)
_ids = itertools.count()
#: A worker row, but for its ``last_seen``.
HEARTBEAT: dict[str, Any] = {
    "name": "w-1",
    "host": "h",
    "pid": 1,
    "queues": [],
    "deployments": [],
    "started_at": utcnow(),
    "stopped_at": None,
}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A migrated SQLite database holding deployment ``D``."""
    url = f"sqlite:///{tmp_path / 'lifecycle.db'}"
    migrations.upgrade(url)
    database = Database(url)
    with database.connect() as conn:
        conn.execute(
            table_of(Deployment)
            .insert()
            .values(
                id=1,
                name="D",
                spec={},
                source_yaml="",
                base_path="",
                version=1,
                created_at=utcnow(),
                updated_at=utcnow(),
            )
        )
    yield database
    database.dispose()


@pytest.fixture
def lifecycle(db: Database) -> Lifecycle:
    return Lifecycle(db)


def task_in(db: Database, lifecycle: Lifecycle, status: TaskStatus) -> str:
    """A task inserted through the lifecycle, dispatched and published, now in ``status``."""
    task_id = f"t-{next(_ids)}"
    new = NewTask(id=task_id, deployment_id=1, version=1, service="svc", input={})
    assert lifecycle.insert(new, single_use_session=True) is not None
    lifecycle.note_published([task_id])
    with db.connect() as conn:
        conn.execute(update(_tasks).where(_tasks.c.id == task_id).values(status=status.value))
    return task_id


def new_task(session_id: str | None = None) -> NewTask:
    """A new task of service ``svc`` of deployment 1, with a fresh id."""
    return NewTask(
        id=f"t-{next(_ids)}",
        deployment_id=1,
        version=1,
        service="svc",
        input={},
        session_id=session_id,
    )


def row(db: Database, task_id: str) -> Any:
    with db.peek() as conn:
        return conn.execute(select(_tasks).where(_tasks.c.id == task_id)).one()


def start(lifecycle: Lifecycle, task_id: str, _: TaskStatus) -> None:
    lifecycle.start(StepStarted(task_id=task_id, worker="w-1", at=time.time(), inbox="in-1"))


def await_input(lifecycle: Lifecycle, task_id: str, _: TaskStatus) -> None:
    event = {"type": "InputRequiredEvent", "qualified_name": "x.I", "input_required": True}
    lifecycle.record_event(StepEvent(task_id=task_id, seq=0, event=event, at=time.time()))


def resume(lifecycle: Lifecycle, task_id: str, _: TaskStatus) -> None:
    # An ended task takes no more events: the Conflict is the refusal
    with contextlib.suppress(Conflict):
        lifecycle.resume(task_id, {"qualified_name": "x.HumanResponseEvent", "value": {}})


def finish(lifecycle: Lifecycle, task_id: str, end: TaskStatus, *, with_start: bool) -> None:
    """A worker's end report that gives the task ``end`` (a retry in a second for
    ``retrying``, a stop for ``timed_out`` and ``cancelled``)."""
    now = time.time()
    stopped = {T: "timed_out", C: "cancelled"}.get(end)
    lifecycle.finish(
        StepFinished(
            task_id=task_id,
            ok=end is S,
            result="done" if end is S else None,
            error=None if end is S else {"type": "ValueError", "message": "boom"},
            event_count=0,
            events=[],
            worker="w-1",
            started_at=now,
            started_reported=not with_start,
            at=now,
            stopped=stopped,
            retry_in=1.0 if end is Y else None,
        )
    )


def parked(task_id: str) -> StepFinished:
    """A durable run's report that it was let go while it waited for input."""
    now = time.time()
    return StepFinished(
        task_id=task_id,
        ok=True,
        result=None,
        error=None,
        event_count=0,
        events=[],
        worker="w-1",
        started_at=now,
        started_reported=True,
        at=now,
        parked=True,
    )


def park(lifecycle: Lifecycle, task_id: str, _: TaskStatus) -> None:
    lifecycle.park(parked(task_id))


def unpark(lifecycle: Lifecycle, task_id: str, _: TaskStatus) -> None:
    """A run let go while an answer it never took was already stored: queued again."""
    with lifecycle._db.connect() as conn:
        conn.execute(
            insert(_events).values(
                task_id=task_id,
                direction="in",
                seq=0,
                type="HumanResponseEvent",
                qualified_name="x.HumanResponseEvent",
                data={},
                created_at=utcnow(),
            )
        )
    lifecycle.park(parked(task_id))


def cancel(lifecycle: Lifecycle, task_id: str, _: TaskStatus) -> None:
    # An ended task is not cancelled: the Conflict is the refusal
    with contextlib.suppress(Conflict):
        lifecycle.cancel(1, task_id)


def send_due(lifecycle: Lifecycle, task_id: str, _: TaskStatus) -> None:
    # Its backoff ran out a second ago (a task of another status has none to run out)
    with lifecycle._db.connect() as conn:
        conn.execute(
            update(_tasks)
            .where(_tasks.c.id == task_id)
            .values(retry_at=utcnow() - dt.timedelta(seconds=1))
        )
    lifecycle.send_due(utcnow(), lambda _step: True)


def expire(lifecycle: Lifecycle, task_id: str, _: TaskStatus) -> None:
    # Its allowed wait in the queue ran out a second ago
    with lifecycle._db.connect() as conn:
        conn.execute(
            update(_tasks)
            .where(_tasks.c.id == task_id)
            .values(expires_at=utcnow() - dt.timedelta(seconds=1))
        )
    lifecycle.time_out_waiting(utcnow())


def overrun(lifecycle: Lifecycle, task_id: str, _: TaskStatus) -> None:
    # It started an hour ago, with a time limit of a minute
    with lifecycle._db.connect() as conn:
        conn.execute(
            update(_tasks)
            .where(_tasks.c.id == task_id)
            .values(started_at=utcnow() - dt.timedelta(hours=1), controls={"time-limit": 60})
        )
    lifecycle.time_out_overrun(utcnow(), grace=30)


def retry(lifecycle: Lifecycle, task_id: str, _: TaskStatus) -> None:
    # A task that did not fail (nor was cancelled) is not retried: the Conflict is the refusal
    with contextlib.suppress(Conflict):
        lifecycle.retry(1, task_id)


def requeue(lifecycle: Lifecycle, _task_id: str, _: TaskStatus) -> None:
    lifecycle.requeue_lost()


def recover(lifecycle: Lifecycle, task_id: str, _: TaskStatus) -> None:
    # Every lease ran out an hour ago, by the clock of a heartbeat heard now
    db = lifecycle._db
    with db.connect() as conn:
        conn.execute(delete(_workers))
        conn.execute(insert(_workers).values(**HEARTBEAT, last_seen=utcnow()))
        conn.execute(
            update(_tasks)
            .where(_tasks.c.id == task_id)
            .values(held_at=utcnow() - dt.timedelta(hours=1))
        )
    lifecycle.recover(dt.timedelta(minutes=1), lambda _step: True)


Apply = Callable[[Lifecycle, str, TaskStatus], None]


#: How each operation is asked for, by the status it aims at (finish twice: with and
#: without the run's start, two statements).
def _reported(by: Operation) -> list[tuple[Operation, Apply]]:
    """A worker's end report, with and without the run's start (two statements)."""
    return [
        (by, lambda lc, t, end: finish(lc, t, end, with_start=False)),
        (by, lambda lc, t, end: finish(lc, t, end, with_start=True)),
    ]


AIMED: dict[TaskStatus, list[tuple[Operation, Apply]]] = {
    Q: [
        (Operation.REQUEUE, requeue),
        (Operation.RECOVER, recover),
        (Operation.RETRY, retry),
        (Operation.RETRY_DUE, send_due),
        (Operation.UNPARK, unpark),
    ],
    R: [(Operation.START, start), (Operation.RESUME, resume)],
    W: [(Operation.AWAIT_INPUT, await_input), (Operation.PARK, park)],
    Y: _reported(Operation.FINISH),
    S: _reported(Operation.FINISH),
    F: _reported(Operation.FINISH),
    C: [(Operation.CANCEL, cancel), *_reported(Operation.CANCEL)],
    T: [
        (Operation.TIME_OUT, expire),
        (Operation.TIME_OUT, overrun),
        *_reported(Operation.TIME_OUT),
    ],
}


#: Sweeps that pick tasks by more than their status: the statuses they can move.
REACHES: dict[Apply, set[TaskStatus]] = {
    # A task waits in the queue only while it is queued
    expire: {Q},
    # Only a run in progress can overrun; a task queued again keeps its last run's start
    overrun: {R, W},
}


def test_the_table_holds_exactly_the_moves_written_out_here() -> None:
    in_table = {
        (source, target, operation)
        for source, targets in MOVES.items()
        for target, operations in targets.items()
        for operation in operations
    }
    assert in_table == ALLOWED
    # Any task that has not ended can be cancelled; one that has not started, or runs, can
    # time out; a retrying one waits for its backoff, not for a worker
    assert {s for s in TaskStatus if C in TRANSITIONS[s]} == {Q, R, W, Y}
    assert {s for s in TaskStatus if T in TRANSITIONS[s]} == {Q, R, W}
    # An ended task moves only when a client retries it, and a success is never retried
    assert {s for s in TaskStatus if s.terminal} == {S, F, C, T}
    assert {s: TRANSITIONS[s] for s in (S, F, C, T)} == {S: set(), F: {Q}, C: {Q}, T: {Q}}
    assert {s for s in TaskStatus if Q in TRANSITIONS[s] and s.terminal} == Q.sources(
        Operation.RETRY
    )


@pytest.mark.parametrize("target", TaskStatus, ids=lambda s: s.value)
@pytest.mark.parametrize("source", TaskStatus, ids=lambda s: s.value)
def test_an_operation_moves_a_task_only_where_the_table_lets_it(
    db: Database, lifecycle: Lifecycle, source: TaskStatus, target: TaskStatus
) -> None:
    for operation, apply in AIMED[target]:
        # Given a task in ``source`` (the only one: requeue takes every lost task)
        task_id = task_in(db, lifecycle, source)
        # When the operation that aims at ``target`` is asked for
        apply(lifecycle, task_id, target)
        # Then the task moved there if the table allows this move by this operation, and
        # else stayed where it was
        allowed = (source, target, operation) in ALLOWED and source in REACHES.get(
            apply, set(TaskStatus)
        )
        after = row(db, task_id)
        assert after.status == (target if allowed else source).value, (operation, allowed)
        if operation is Operation.REQUEUE:
            # A queued task stays queued either way: what shows the move is its lost note
            assert (after.published_at is None) is allowed
        if operation is Operation.RECOVER:
            # Likewise: a recovered task's lease is gone, a refused one's is still there
            assert (after.held_at is None) is allowed
        if operation is Operation.RETRY:
            # Likewise: a retried task is dispatched anew and unpublished, a refused one is
            # still noted as published
            assert (after.published_at is None) is allowed
        with db.connect() as conn:
            conn.execute(update(_tasks).where(_tasks.c.id == task_id).values(status=S.value))
    if not AIMED[target]:
        # No operation reaches this status at all
        for moves in AIMED.values():
            for _operation, apply in moves:
                task_id = task_in(db, lifecycle, source)
                apply(lifecycle, task_id, target)
                assert row(db, task_id).status != target.value or source is target


def test_a_late_start_report_leaves_a_task_waiting_for_input_and_counts_the_attempt(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given a task whose question was recorded before its start report
    task_id = task_in(db, lifecycle, Q)
    await_input(lifecycle, task_id, W)
    # When the start report arrives
    start(lifecycle, task_id, R)
    # Then the task still waits for input, and the attempt and its worker are known
    after = row(db, task_id)
    assert (after.status, after.attempts, after.worker, after.inbox) == (W, 1, "w-1", "in-1")


@pytest.mark.parametrize("end", [S, F], ids=lambda s: s.value)
def test_another_runs_start_after_the_end_leaves_the_ended_tasks_start_and_worker(
    db: Database, lifecycle: Lifecycle, end: TaskStatus
) -> None:
    # Given a task that started on w-1 and ended
    task_id = task_in(db, lifecycle, Q)
    start(lifecycle, task_id, R)
    finish(lifecycle, task_id, end, with_start=False)
    ended = row(db, task_id)
    # When another run of it (the broker's redelivery of a recovered task) starts on w-2
    later = StepStarted(task_id=task_id, worker="w-2", at=time.time() + 5, inbox="in-2")
    lifecycle.start(later)
    # Then the task keeps the start, worker and inbox of the run that ended it
    after = row(db, task_id)
    kept = (after.status, after.worker, after.started_at, after.inbox, after.held_at)
    assert kept == (end.value, "w-1", ended.started_at, "in-1", ended.held_at)
    # But an end that overtook its start report still gets the start filled in
    overtaken = task_in(db, lifecycle, Q)
    finish(lifecycle, overtaken, end, with_start=False)
    assert row(db, overtaken).started_at is None
    start(lifecycle, overtaken, R)
    filled = row(db, overtaken)
    assert (filled.status, filled.worker) == (end.value, "w-1")
    assert filled.started_at is not None


@pytest.mark.parametrize("end", [S, F], ids=lambda s: s.value)
def test_a_late_start_or_a_late_question_never_brings_an_ended_task_back(
    db: Database, lifecycle: Lifecycle, end: TaskStatus
) -> None:
    # Given a task whose outcome was recorded before its other reports
    task_id = task_in(db, lifecycle, Q)
    finish(lifecycle, task_id, end, with_start=False)
    # When its start report and its question arrive late
    start(lifecycle, task_id, R)
    await_input(lifecycle, task_id, W)
    # Then it keeps the outcome it ended with
    assert row(db, task_id).status == end.value


def stored_events(db: Database, task_id: str) -> list[Any]:
    with db.peek() as conn:
        query = select(_events).where(_events.c.task_id == task_id).order_by(_events.c.id)
        return list(conn.execute(query))


def test_an_event_of_a_task_that_is_gone_is_dropped_and_said_so(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given a running task whose row was deleted (with its deployment, say) while it ran
    task_id = task_in(db, lifecycle, R)
    with db.connect() as conn:
        conn.execute(delete(_tasks).where(_tasks.c.id == task_id))
    # When one of its events arrives
    event = {"type": "Note", "qualified_name": "x.Note", "data": {}}
    kept = lifecycle.record_event(StepEvent(task_id=task_id, seq=0, event=event, at=time.time()))
    # Then nothing is stored, and the caller is told so (no stream is woken for it)
    assert kept is False
    assert stored_events(db, task_id) == []


def test_event_names_longer_than_their_columns_are_cut_to_the_columns_widths(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given a running task, and the widths of the events' name columns
    task_id = task_in(db, lifecycle, R)
    type_width = _events.c.type.type.length
    name_width = _events.c.qualified_name.type.length
    long_type = "T" * (type_width + 50)
    long_name = "module." * 100 + long_type
    # When it streams an event, and a client sends one in, both with names too long
    event = {"type": long_type, "qualified_name": long_name, "data": {"n": 1}}
    lifecycle.record_event(StepEvent(task_id=task_id, seq=0, event=event, at=time.time()))
    lifecycle.resume(task_id, {"qualified_name": long_name, "value": {}})
    # Then both are stored (a database that checks widths would refuse them whole), their
    # names cut to exactly the columns' widths
    streamed, sent_in = stored_events(db, task_id)
    for stored in (streamed, sent_in):
        assert (stored.type, stored.qualified_name) == (
            long_type[:type_width],
            long_name[:name_width],
        )


def test_each_event_sent_into_a_task_gets_the_next_number(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given a task waiting for input
    task_id = task_in(db, lifecycle, W)
    # When a client sends it three events in turn
    numbers = [
        lifecycle.resume(task_id, {"qualified_name": "x.HumanResponseEvent", "value": n})[0]
        for n in range(3)
    ]
    # Then they are numbered 0, 1, 2 among its inputs, and stored in that order
    assert numbers == [0, 1, 2]
    assert [(e.seq, e.data["value"]) for e in stored_events(db, task_id)] == [
        (0, 0),
        (1, 1),
        (2, 2),
    ]


@pytest.mark.parametrize("fate", ["ended", "deleted"])
def test_a_session_held_by_a_task_that_is_over_is_taken_by_the_next_one(
    db: Database, lifecycle: Lifecycle, fate: str
) -> None:
    # Given a session whose turn a task holds, and that task over without having passed the
    # turn on: ended, or deleted
    session_id = lifecycle.open_session("D").id
    first, second = (new_task(session_id) for _ in range(2))
    inserted = lifecycle.insert(first)
    assert inserted is not None and inserted[1].run_now
    with db.connect() as conn:
        if fate == "ended":
            conn.execute(update(_tasks).where(_tasks.c.id == first.id).values(status=S.value))
        else:
            conn.execute(delete(_tasks).where(_tasks.c.id == first.id))
    # When the session's next task arrives
    stored = lifecycle.insert(second)
    # Then it takes the turn and runs now, instead of waiting for ever
    assert stored is not None
    task, turn = stored
    assert turn.run_now
    assert task.dispatched_at is not None


def test_an_outcome_of_a_session_task_delivered_twice_is_recorded_once(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given a session's task that ran, and the next task waiting for its turn
    session_id = lifecycle.open_session("D").id
    first, waiting = (new_task(session_id) for _ in range(2))
    assert lifecycle.insert(first) is not None
    assert lifecycle.insert(waiting) is not None
    now = time.time()
    outcome = StepFinished(
        task_id=first.id,
        ok=True,
        result="done",
        error=None,
        event_count=0,
        events=[],
        worker="w-1",
        started_at=now,
        started_reported=False,
        at=now,
        context={"count": 1},
        keep_context=True,
    )
    # When its outcome is delivered twice (at least once delivery)
    once = lifecycle.finish(outcome)
    again = lifecycle.finish(outcome)
    # Then the first delivery records it and hands the turn on; the second changes nothing
    assert once.status is S and once.following is not None
    assert once.following.task_id == waiting.id
    assert (again.status, again.following) == (None, None)
    assert row(db, first.id).status == S.value


def test_a_task_without_a_session_gets_one_of_its_own_unless_it_is_single_use(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given two tasks sent without a session
    kept, single = (new_task() for _ in range(2))
    # When one is stored as is, and the other as single use (as tasks/run stores its task)
    stored = lifecycle.insert(kept)
    once = lifecycle.insert(single, single_use_session=True)
    # Then the first has a new session, whose turn it holds; the second has none
    assert stored is not None and once is not None
    session_id = stored[0].session_id
    assert session_id is not None and once[0].session_id is None
    with db.peek() as conn:
        holder = conn.scalar(
            select(table_of(Session).c.active_task_id).where(table_of(Session).c.id == session_id)
        )
    assert holder == kept.id
    assert (row(db, kept.id).session_id, row(db, single.id).session_id) == (session_id, None)


def test_an_event_sent_in_under_a_bare_name_is_stored_under_it(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given a task waiting for input
    task_id = task_in(db, lifecycle, W)
    # When a client sends an event whose qualified name has no module part
    lifecycle.resume(task_id, {"qualified_name": "Answer", "value": 42})
    # Then it is stored, its type the name itself
    [stored] = stored_events(db, task_id)
    assert (stored.type, stored.qualified_name, stored.data["value"]) == ("Answer", "Answer", 42)
