"""A session's next task is sent when the task before it ends; a broker away at that moment
leaves it queued for the outbox's sweep, never failed (on SQLite, with a real outage: a Redis
broker on a port where nothing listens)."""

from __future__ import annotations

import datetime as dt
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import migrations
from app.control.dispatch import Dispatcher
from app.control.lifecycle import Lifecycle, NewTask
from app.control.outbox import Outbox
from app.control.recorder import Recorder
from app.control.waiter import TaskWaiter
from app.db import Database
from app.models import Deployment, Session, Task, TaskStatus
from app.models.base import table_of, utcnow
from config.settings import Settings
from tests.support import queues
from workers.celery_app import create_celery
from workers.protocol import StepEvent, StepFinished, StepStarted

_tasks = table_of(Task)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A migrated SQLite database holding deployment ``D`` and session ``s1``."""
    url = f"sqlite:///{tmp_path / 'turns.db'}"
    migrations.upgrade(url)
    database = Database(url)
    with database.begin() as session:
        session.add(Deployment(id=1, name="D", spec={}, source_yaml="", base_path=""))
        session.flush()
        session.add(Session(id="s1", deployment_id=1))
    yield database
    database.dispose()


def closed_port() -> int:
    """A local TCP port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def queued(lifecycle: Lifecycle, task_id: str) -> None:
    """A task of session ``s1``, stored as the API stores it."""
    new = NewTask(id=task_id, deployment_id=1, version=1, service="svc", input={}, session_id="s1")
    assert lifecycle.insert(new) is not None


def succeeded(task_id: str) -> StepFinished:
    """A worker's report that the session task's run succeeded, with the session's Context."""
    now = time.time()
    stop = StepEvent(task_id=task_id, seq=0, event={"type": "StopEvent", "data": {}}, at=now)
    return StepFinished(
        task_id=task_id,
        ok=True,
        result="done",
        error=None,
        event_count=1,
        events=[stop.encode()],
        worker="w1",
        started_at=now,
        started_reported=True,
        at=now,
        context={"count": 1},
        keep_context=True,
    )


def row(db: Database, task_id: str) -> Any:
    with db.peek() as conn:
        return conn.execute(select(_tasks).where(_tasks.c.id == task_id)).one()


def test_a_sessions_next_task_the_broker_refuses_stays_queued_for_the_outbox(
    db: Database, tmp_path: Path
) -> None:
    # Given a session whose first task runs and whose two next tasks wait their turn, on a
    # control plane whose broker does not answer
    lifecycle = Lifecycle(db)
    away = create_celery(
        Settings(data_dir=tmp_path / "away", broker_url=f"redis://127.0.0.1:{closed_port()}/0")
    )
    outbox = Outbox(lifecycle, Dispatcher(away), redispatch_after=30.0)
    recorder = Recorder(db, lifecycle, TaskWaiter(), Dispatcher(away), outbox)
    for task_id in ("first", "second", "third"):
        queued(lifecycle, task_id)
    lifecycle.start(StepStarted(task_id="first", worker="w1", at=time.time(), inbox="in-w1"))

    # When the first task's outcome is recorded, and the broker refuses the second's step
    recorder.finished(succeeded("first"))
    outbox.close()

    # Then the second task is still queued, dispatched and not published: the client was
    # told it was queued, and nothing failed it
    second = row(db, "second")
    assert (second.status, second.error) == (TaskStatus.QUEUED.value, None)
    assert second.dispatched_at is not None and second.published_at is None
    # And the third still waits behind it, in the session's order
    third = row(db, "third")
    assert (third.status, third.dispatched_at) == (TaskStatus.QUEUED.value, None)
    # And once the broker is back, the outbox's sweep sends the second one
    back = create_celery(Settings(data_dir=tmp_path / "back"))
    queues.drain(back, "D", "svc")
    later = utcnow() + dt.timedelta(seconds=31)
    assert Outbox(lifecycle, Dispatcher(back), redispatch_after=30.0).sweep(later) == ["second"]
    assert [body[1]["task_id"] for body in queues.drain(back, "D", "svc")] == ["second"]
