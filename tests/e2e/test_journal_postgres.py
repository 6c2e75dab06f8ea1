"""The journal's writes on PostgreSQL, where two control-plane consumers write one run's
messages side by side: the checkpoint is made by the run's first message in the statement that
advances it, the steps that go with a run's outcome are written in the outcome's statement and
never wait for the run's other messages, and attempts are numbered as listed whatever order
the steps were written in."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select, update

from app.control.journal import Journal
from app.control.lifecycle import Lifecycle
from app.db import Database
from app.models import Checkpoint, JournalTick, Task, TaskStatus
from app.models.base import table_of
from tests.app.test_journal import step
from tests.e2e.conftest import fresh_postgres_database, seeded_database
from workers.protocol import JournalWanted, JournalWritten, StepFinished

TASK = "t-1"
_tasks = table_of(Task)
_checkpoints = table_of(Checkpoint)


@pytest.fixture
def db() -> Iterator[Database]:
    """A migrated PostgreSQL database holding one task in its first run."""
    with (
        fresh_postgres_database("celeriac_journal") as url,
        seeded_database(url, [TASK]) as database,
    ):
        with database.connect() as conn:
            conn.execute(update(_tasks).values(run=1))
        yield database


@pytest.fixture
def journal(db: Database) -> Journal:
    return Journal(db, dispatcher=None)  # type: ignore[arg-type]  # it answers no worker here


@pytest.fixture
def finish(db: Database, journal: Journal) -> Callable[[JournalWritten], TaskStatus | None]:
    """Records the outcome of the task's run that carries ``last``'s steps, as the control
    plane does (``Recorder.finished``); returns the status it gave the task, if it changed."""
    lifecycle = Lifecycle(db)

    def finish(last: JournalWritten) -> TaskStatus | None:
        now = time.time()
        outcome = StepFinished(
            task_id=TASK,
            ok=True,
            result="done",
            error=None,
            event_count=0,
            events=[],
            worker="w",
            started_at=now - 0.01,
            started_reported=False,
            at=now,
            run=last.run,
            journal=last.encode(),
        )
        return lifecycle.finish(outcome, journal.last_steps(last)).status

    return finish


def written(*seqs: int, run: int = 1, epoch: int = 0, **fields: Any) -> JournalWritten:
    records: list[list[Any]] = [[seq, json.dumps({"tick": seq})] for seq in seqs]
    return JournalWritten(
        task_id=TASK, run=run, epoch=epoch, records=records, through=max(seqs) + 1, **fields
    )


def last(*steps: dict[str, Any], run: int = 1, epoch: int = 0) -> JournalWritten:
    """What a run that returned its StopEvent sends with its outcome: steps, no ticks."""
    return JournalWritten(task_id=TASK, run=run, epoch=epoch, records=[], steps=list(steps))


def ticks(db: Database) -> list[int]:
    with db.peek() as conn:
        return list(
            conn.execute(
                select(JournalTick.seq).where(JournalTick.task_id == TASK).order_by(JournalTick.seq)
            ).scalars()
        )


def checkpoint(db: Database) -> Checkpoint | None:
    with db.read() as session:
        return session.get(Checkpoint, TASK)


def test_the_first_message_makes_the_checkpoint_and_the_next_ones_advance_it(
    db: Database, journal: Journal
) -> None:
    assert checkpoint(db) is None
    assert journal.record(written(0, 1, state={"n": 1}, steps=[step(1)]))
    made = checkpoint(db)
    assert made is not None
    assert (made.run, made.epoch, made.state, made.state_through) == (1, 0, {"n": 1}, 2)
    assert made.waiters is None and made.inputs == -1 and made.journal_seq == 0

    waits = [{"step": "ask", "waiter_id": "w", "deadline": 5.0}]
    assert journal.record(written(2, 3, waiters=waits, steps=[step(3, "two")]))
    assert journal.record(written(2, 3, waiters=waits, steps=[step(3, "two")]))  # again
    advanced = checkpoint(db)
    assert advanced is not None
    # No state in that message: the first one's stays; its waits are newer, and kept.
    assert (advanced.state, advanced.state_through, advanced.waiters) == ({"n": 1}, 2, waits)
    assert ticks(db) == [0, 1, 2, 3]
    assert [(s.step, s.attempt) for s in journal.steps(TASK)] == [("one", 1), ("two", 1)]


def test_a_first_message_of_another_run_or_attempt_makes_no_checkpoint(
    db: Database, journal: Journal
) -> None:
    assert not journal.record(written(0, run=2))  # the task is in its run 1
    assert checkpoint(db) is None
    assert not journal.record(written(0, epoch=1))  # an attempt the control plane never began
    assert ticks(db) == []
    assert not journal.record(
        JournalWritten(task_id="no-such-task", run=1, records=[[0, "{}"]], through=1)
    )


def test_first_messages_written_side_by_side_make_one_checkpoint_and_lose_no_tick(
    db: Database, journal: Journal
) -> None:
    messages = [written(2 * n, 2 * n + 1, state={"n": n}) for n in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert all(pool.map(journal.record, messages))
    assert ticks(db) == list(range(16))
    kept = checkpoint(db)
    assert kept is not None
    assert (kept.state, kept.state_through) == ({"n": 7}, 16)  # the newest state wins


def test_the_steps_with_an_outcome_do_not_wait_for_a_message_being_written(
    db: Database, journal: Journal, finish: Callable[[JournalWritten], TaskStatus | None]
) -> None:
    journal.record(written(0, 1, steps=[step(1)]))
    with db.connect() as conn:
        # Another consumer is writing the run's next message: it holds the checkpoint's lock.
        conn.execute(select(_checkpoints).where(_checkpoints.c.task_id == TASK).with_for_update())
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            status = pool.submit(finish, last(step(5, "three"))).result(timeout=5)
        assert time.monotonic() - started < 1.0
    assert status is TaskStatus.SUCCEEDED
    assert [s.step for s in journal.steps(TASK)] == ["one", "three"]


def test_the_steps_with_an_outcome_are_kept_only_from_the_runs_current_attempt(
    db: Database, journal: Journal, finish: Callable[[JournalWritten], TaskStatus | None]
) -> None:
    # A run of one step sends nothing before its outcome: there is no checkpoint yet.
    assert finish(last(step(0, "only"))) is TaskStatus.SUCCEEDED
    assert [s.step for s in journal.steps(TASK)] == ["only"]

    journal.record(written(1, 2))
    journal.replay(JournalWanted(task_id=TASK, run=1, inbox="q"))  # a new attempt: epoch 1
    # Outcomes of a task that ended change it no more; their steps are still written, but
    # not the late ones of the lost worker's attempt, nor another run's
    assert finish(last(step(7, "stale"), epoch=0)) is None
    assert finish(last(step(8, "other run"), run=2)) is None
    assert finish(last(step(9, "current"), epoch=1)) is None
    assert [s.step for s in journal.steps(TASK)] == ["only", "current"]


def test_attempts_are_numbered_in_the_order_steps_ended_whatever_the_writes_order(
    journal: Journal, finish: Callable[[JournalWritten], TaskStatus | None]
) -> None:
    journal.record(written(4, 5, steps=[step(5, "ask", "q")]))  # written first, ended later
    journal.record(written(0, 1, steps=[step(1, "ask", "q")]))
    finish(last(step(9, "ask", "q")))
    finish(last(step(9, "ask", "q")))  # the outcome delivered twice
    listed = journal.steps(TASK)
    assert [(s.seq, s.attempt) for s in listed] == [(1, 1), (5, 2), (9, 3)]
