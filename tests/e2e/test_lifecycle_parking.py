"""Parking on PostgreSQL: a durable run let go while it waits for input parks its task,
unless an answer its journal lacks is already stored.

(SQLite lets a scalar subquery return several rows and takes the first; PostgreSQL refuses,
so a statement that reads the checkpoint once per event of the task fails there only.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import insert, select, update

from app.control.lifecycle import Lifecycle
from app.db import Database
from app.models import Checkpoint, Event, Task, TaskStatus
from app.models.base import table_of, utcnow
from tests.e2e.conftest import fresh_postgres_database, seeded_database
from workers.protocol import StepFinished

TASK = "t-1"
_tasks = table_of(Task)
_events = table_of(Event)
_checkpoints = table_of(Checkpoint)


@pytest.fixture
def db() -> Iterator[Database]:
    """A migrated PostgreSQL database holding one task waiting for input: it streamed three
    events, was sent one answer (number 0) that its journal includes, and has a checkpoint."""
    with (
        fresh_postgres_database("celeriac_parking") as url,
        seeded_database(url, [TASK]) as database,
    ):
        with database.connect() as conn:
            conn.execute(
                update(_tasks).values(
                    status=TaskStatus.WAITING_INPUT.value, worker="w-1", inbox="in-1", run=1
                )
            )
            conn.execute(insert(_events), [_event("out", seq) for seq in range(3)])
            conn.execute(insert(_events), [_event("in", 0)])
            conn.execute(insert(_checkpoints).values(task_id=TASK, run=1, inputs=0))
        yield database


def _event(direction: str, seq: int) -> dict[str, object]:
    name = "HumanResponseEvent" if direction == "in" else "InputRequiredEvent"
    return {
        "task_id": TASK,
        "direction": direction,
        "seq": seq,
        "type": name,
        "qualified_name": f"workflows.events.{name}",
        "data": {},
        "created_at": utcnow(),
    }


def _let_go() -> StepFinished:
    """The worker's report that it let the waiting run go."""
    now = time.time()
    return StepFinished(
        task_id=TASK,
        ok=True,
        result=None,
        error=None,
        event_count=3,
        events=[],
        worker="w-1",
        started_at=now,
        started_reported=True,
        at=now,
        parked=True,
    )


def _task(db: Database) -> tuple[str, bool]:
    with db.peek() as conn:
        status, parked_at = conn.execute(select(_tasks.c.status, _tasks.c.parked_at)).one()
    return status, parked_at is not None


def test_a_run_let_go_with_every_answer_taken_parks_its_task(db: Database) -> None:
    # When the worker lets the run go, every answer sent in being in its journal
    step = Lifecycle(db).park(_let_go())

    # Then the task waits, parked, and no step is sent
    assert step is None
    assert _task(db) == (TaskStatus.WAITING_INPUT.value, True)


def test_a_run_let_go_with_an_answer_it_never_took_is_queued_again(db: Database) -> None:
    # Given a second answer (number 1) that arrived while the run was being let go
    with db.connect() as conn:
        conn.execute(insert(_events), [_event("in", 1)])

    # When the worker's report comes
    step = Lifecycle(db).park(_let_go())

    # Then the task is queued again, not parked, with its step to send
    assert step is not None and step.task_id == TASK
    assert _task(db) == (TaskStatus.QUEUED.value, False)
