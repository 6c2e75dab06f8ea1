"""The recorder on SQLite and on PostgreSQL: an outcome is stored once, with its last events,
however often its report is delivered.

PostgreSQL records a task without a session in one statement and SQLite in a transaction of
several; both must leave the same rows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select

from app.control.dispatch import Dispatcher
from app.control.lifecycle import Lifecycle
from app.control.outbox import Outbox
from app.control.recorder import Recorder
from app.control.waiter import Outcome, TaskWaiter
from app.db import Database
from app.models import Event, Task
from app.models.base import table_of
from config.settings import Settings
from tests.e2e.conftest import fresh_postgres_database, seeded_database
from workers.celery_app import create_celery
from workers.protocol import StepEvent, StepFinished

TASK = "t-1"
#: When the run began: every report below is of this one run (its redeliveries included).
STARTED_AT = time.time()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated database holding one deployment and one queued task without a session."""
    with (
        (
            fresh_postgres_database("celeriac_recording")
            if request.param == "postgresql"
            else nullcontext(f"sqlite:///{tmp_path / 'recording.db'}")
        ) as url,
        seeded_database(url, [TASK]) as database,
    ):
        yield database


@pytest.fixture
def waiter() -> TaskWaiter:
    return TaskWaiter()


@pytest.fixture
def recorder(db: Database, waiter: TaskWaiter, tmp_path: Path) -> Recorder:
    # Tasks without a session never dispatch: the memory broker is never reached.
    celery = create_celery(Settings(data_dir=tmp_path / ".celeriac"))
    dispatcher = Dispatcher(celery)
    lifecycle = Lifecycle(db)
    outbox = Outbox(lifecycle, dispatcher, redispatch_after=30.0)
    return Recorder(db, lifecycle, waiter, dispatcher, outbox)


def finished(ok: bool = True, result: Any = "done", last_events: int = 1) -> StepFinished:
    """A quick run's report: its start, its outcome and its last events in one message."""
    now = time.time()
    events = [
        StepEvent(
            task_id=TASK,
            seq=seq,
            event={"type": "StopEvent", "qualified_name": "x.StopEvent", "data": {"n": seq}},
            at=now,
        ).encode()
        for seq in range(last_events)
    ]
    return StepFinished(
        task_id=TASK,
        ok=ok,
        result=result if ok else None,
        error=None if ok else {"type": "ValueError", "message": "boom"},
        event_count=last_events,
        events=events,
        worker="w-1",
        started_at=STARTED_AT,
        started_reported=False,
        at=now,
    )


def task_row(db: Database) -> Any:
    with db.peek() as conn:
        return conn.execute(select(table_of(Task)).where(table_of(Task).c.id == TASK)).one()


def stored_events(db: Database) -> list[tuple[int, str, Any]]:
    events = table_of(Event)
    with db.peek() as conn:
        query = select(events.c.seq, events.c.type, events.c.data).order_by(events.c.seq)
        return [tuple(row) for row in conn.execute(query)]


def test_an_outcome_is_stored_with_its_start_and_last_events(
    db: Database, recorder: Recorder
) -> None:
    recorder.finished(finished(result={"answer": 42}, last_events=2))

    row = task_row(db)
    assert (row.status, row.result, row.error) == ("succeeded", {"answer": 42}, None)
    assert (row.attempts, row.worker, row.event_count) == (1, "w-1", 2)
    assert row.started_at is not None and row.finished_at >= row.started_at
    assert stored_events(db) == [(0, "StopEvent", {"n": 0}), (1, "StopEvent", {"n": 1})]


def test_a_redelivered_report_changes_nothing(db: Database, recorder: Recorder) -> None:
    recorder.finished(finished(result="first"))
    recorder.finished(finished(result="second"))
    recorder.finished(finished(ok=False))

    row = task_row(db)
    assert (row.status, row.result, row.attempts) == ("succeeded", "first", 1)
    assert stored_events(db) == [(0, "StopEvent", {"n": 0})]


def test_waiters_in_the_process_get_the_outcome_as_stored_and_not_a_redelivered_one(
    recorder: Recorder, waiter: TaskWaiter
) -> None:
    with waiter.listen(TASK) as first:
        recorder.finished(finished(result="first"))
    with waiter.listen(TASK) as again:
        recorder.finished(finished(result="second"))

    assert first.is_set() and first.outcome == Outcome("succeeded", "first", None)
    # The redelivery wakes waiters, which look, and find the first outcome
    assert again.is_set() and again.outcome is None


def test_a_failure_is_stored_with_its_error(db: Database, recorder: Recorder) -> None:
    recorder.finished(finished(ok=False, last_events=0))

    row = task_row(db)
    assert (row.status, row.result) == ("failed", None)
    assert row.error == {"type": "ValueError", "message": "boom"}
    assert stored_events(db) == []


def test_the_report_of_a_deleted_task_stores_nothing(db: Database, recorder: Recorder) -> None:
    with db.connect() as conn:
        conn.execute(delete(table_of(Task)))

    recorder.finished(finished())

    assert stored_events(db) == []
