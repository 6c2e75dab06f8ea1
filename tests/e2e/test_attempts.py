"""Attempts on SQLite and on PostgreSQL: one row per run of a task, whatever the order and
the number of deliveries of its workers' reports.

PostgreSQL records a quick run's attempt in the statement that stores its outcome, SQLite in
a transaction of several; both must leave the same rows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from app.control.lifecycle import Lifecycle
from app.db import Database
from app.models import Task, TaskAttempt
from app.models.base import table_of, utcnow
from tests.e2e.conftest import fresh_postgres_database, seeded_database
from tests.support.reports import finished, started

TASK = "t-1"
#: When the first and the second run of the task began.
FIRST, SECOND = time.time() - 10, time.time() - 5


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated database holding one deployment and one dispatched task without a session."""
    with (
        (
            fresh_postgres_database("celeriac_attempts")
            if request.param == "postgresql"
            else nullcontext(f"sqlite:///{tmp_path / 'attempts.db'}")
        ) as url,
        seeded_database(url, [TASK]) as database,
    ):
        tasks = table_of(Task)
        with database.connect() as conn:
            conn.execute(update(tasks).values(dispatched_at=utcnow(), published_at=utcnow()))
        yield database


@pytest.fixture
def lifecycle(db: Database) -> Lifecycle:
    return Lifecycle(db)


def history(db: Database) -> list[tuple[Any, ...]]:
    """The task's attempts: number, worker, start (as a timestamp), outcome, error type."""
    attempts = table_of(TaskAttempt)
    with db.peek() as conn:
        rows = conn.execute(select(attempts).order_by(attempts.c.attempt)).all()
    return [
        (
            row.attempt,
            row.worker,
            round(row.started_at.timestamp(), 3),
            row.outcome,
            (row.error or {}).get("type"),
            row.finished_at is not None,
        )
        for row in rows
    ]


def count(db: Database) -> int:
    """The task's ``attempts``."""
    with db.peek() as conn:
        return int(conn.scalar(select(table_of(Task).c.attempts)))


def test_a_quick_run_has_one_attempt_however_often_its_report_arrives(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given a quick run, whose one report carries its start and its end
    report = finished(TASK, started_reported=False, started_at=FIRST, worker="w-1")
    # When it is delivered three times
    for _ in range(3):
        lifecycle.finish(report)
    # Then the task has one attempt, ended as its run did
    assert history(db) == [(1, "w-1", round(FIRST, 3), "succeeded", None, True)]
    assert count(db) == 1


@pytest.mark.parametrize("order", ["start first", "end first"])
def test_repeated_start_and_end_reports_leave_one_attempt(
    db: Database, lifecycle: Lifecycle, order: str
) -> None:
    # Given a run that reported its start, then its failure, each delivered twice, in
    # either order (an end report may overtake the start)
    start = started(TASK, at=FIRST, worker="w-1")
    end = finished(TASK, ok=False, started_at=FIRST, worker="w-1")
    reports: list[Any] = [start, start, end, end] if order == "start first" else [end, start] * 2
    # When they are recorded
    for report in reports:
        (lifecycle.start if report is start else lifecycle.finish)(report)
    # Then the task has one attempt, failed with the run's error
    assert history(db) == [(1, "w-1", round(FIRST, 3), "failed", "ValueError", True)]
    assert count(db) == 1


def test_a_run_whose_worker_was_lost_ends_lost_when_the_next_one_begins(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given a run that began on w-1 and never reported its end (its worker died)
    lifecycle.start(started(TASK, at=FIRST, worker="w-1"))
    assert history(db) == [(1, "w-1", round(FIRST, 3), None, None, False)]
    # When the task runs again, quickly, on w-2
    lifecycle.finish(finished(TASK, started_reported=False, started_at=SECOND, worker="w-2"))
    # Then it has two attempts, the first lost and the second succeeded
    assert history(db) == [
        (1, "w-1", round(FIRST, 3), "lost", "AttemptLost", True),
        (2, "w-2", round(SECOND, 3), "succeeded", None, True),
    ]
    assert count(db) == 2


def test_a_late_end_report_of_a_run_marked_lost_replaces_the_guess(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given a run on w-1 marked lost when a second run began on w-2, which succeeded
    lifecycle.start(started(TASK, at=FIRST, worker="w-1"))
    lifecycle.start(started(TASK, at=SECOND, worker="w-2"))
    lifecycle.finish(finished(TASK, started_at=SECOND, worker="w-2"))
    # When the first run's end arrives after all (it was slow, not dead), twice
    for _ in range(2):
        lifecycle.finish(finished(TASK, ok=False, started_at=FIRST, worker="w-1"))
    # Then its attempt says how it really ended, and the task keeps its outcome
    assert history(db) == [
        (1, "w-1", round(FIRST, 3), "failed", "ValueError", True),
        (2, "w-2", round(SECOND, 3), "succeeded", None, True),
    ]
    with db.peek() as conn:
        assert conn.scalar(select(table_of(Task).c.status)) == "succeeded"


def test_a_start_reported_late_after_a_later_run_is_lost_at_once(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given a task that a second run (w-2) ended
    lifecycle.finish(finished(TASK, started_reported=False, started_at=SECOND, worker="w-2"))
    # When the start report of an earlier run arrives only now
    lifecycle.start(started(TASK, at=FIRST, worker="w-1"))
    # Then that run is numbered as it became known, and is lost: nothing waits for it
    assert history(db) == [
        (1, "w-2", round(SECOND, 3), "succeeded", None, True),
        (2, "w-1", round(FIRST, 3), "lost", "AttemptLost", True),
    ]
    assert count(db) == 2


def test_a_requeued_task_ends_its_open_run_lost_and_runs_again(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given a run under way when the embedded server's process (and its broker) died
    lifecycle.start(started(TASK, at=FIRST, worker="w-1"))
    # When the restarted server queues the task again, and it runs on
    assert lifecycle.requeue_lost() == 1
    lifecycle.finish(finished(TASK, started_reported=False, started_at=SECOND, worker="w-1"))
    # Then the first run ended lost, the second succeeded
    assert history(db) == [
        (1, "w-1", round(FIRST, 3), "lost", "AttemptLost", True),
        (2, "w-1", round(SECOND, 3), "succeeded", None, True),
    ]
    assert count(db) == 2


def test_an_outcome_with_no_worker_records_no_attempt(db: Database, lifecycle: Lifecycle) -> None:
    # When the control plane fails a task it could not send (no worker ran it)
    lifecycle.finish(finished(TASK, ok=False, worker=""))
    # Then the task failed with no attempt
    assert history(db) == []
    assert count(db) == 0
