"""The task lifecycle's retries by policy on PostgreSQL: the sweep commits a retry before it
sends its step, so the end of a run that reports at once is recorded.

(On SQLite a report waits for the sweep's transaction whatever it reads; on PostgreSQL a
report that reads the task before the retry is committed finds it at its earlier run, and
changes nothing.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy import select, update

from app.control.lifecycle import Lifecycle
from app.db import Database
from app.models import Task, TaskStatus
from app.models.base import table_of, utcnow
from tests.e2e.conftest import fresh_postgres_database, seeded_database
from tests.support.reports import finished
from workers.protocol import RunStep

TASK = "t-1"
_tasks = table_of(Task)


@pytest.fixture
def db() -> Iterator[Database]:
    """A migrated PostgreSQL database holding one published task without a session."""
    with (
        fresh_postgres_database("celeriac_retries") as url,
        seeded_database(url, [TASK]) as database,
    ):
        with database.connect() as conn:
            conn.execute(update(_tasks).values(dispatched_at=utcnow(), published_at=utcnow()))
        yield database


def test_a_run_the_sweep_sends_again_that_ends_at_once_is_recorded(db: Database) -> None:
    # Given a task whose first run failed with an error its policy retries at once
    lifecycle = Lifecycle(db)
    failed = finished(TASK, ok=False, started_reported=False)
    assert lifecycle.finish(replace(failed, run=1, retry_in=0.0)).status is TaskStatus.RETRYING

    # When the sweep sends its second run, and a worker quicker than the sweep reports the
    # run's end as soon as it has the step
    reports: list[threading.Thread] = []

    def send(step: RunStep) -> bool:
        ended = replace(
            finished(TASK, started_reported=False, started_at=time.time()), run=step.run
        )
        report = threading.Thread(target=lifecycle.finish, args=(ended,))
        report.start()
        report.join(timeout=2.0)  # (it would wait for ever if it waited for the sweep)
        reports.append(report)
        return True

    assert lifecycle.send_due(utcnow(), send) == [TASK]
    for report in reports:
        report.join(timeout=10.0)

    # Then the second run's end is recorded: the task succeeded on its second run
    with db.peek() as conn:
        row = conn.execute(select(_tasks.c.status, _tasks.c.run, _tasks.c.attempts)).one()
    assert tuple(row) == (TaskStatus.SUCCEEDED.value, 2, 2)
