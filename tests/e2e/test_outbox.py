"""The outbox on SQLite and on PostgreSQL: a task whose sender died between commit and publish
is sent again by the sweep, once; published, recent and waiting tasks are left alone."""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update

from app.control.dispatch import Dispatcher
from app.control.lifecycle import Lifecycle
from app.control.outbox import Outbox
from app.db import Database
from app.models import Session, Task, TaskStatus
from app.models.base import table_of, utcnow
from config.settings import Settings
from tests.e2e.conftest import fresh_postgres_database, seeded_database
from tests.support import queues
from workers.celery_app import CeleriacCelery, create_celery
from workers.protocol import RunStep

LOST, SENT, RECENT, WAITING = "lost", "sent", "recent", "waiting"
LONG_AGO = dt.timedelta(minutes=5)
_tasks = table_of(Task)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated database holding deployment ``D`` and four queued tasks of service ``svc``
    that no sender has noted as published yet."""
    with (
        (
            fresh_postgres_database("celeriac_outbox")
            if request.param == "postgresql"
            else nullcontext(f"sqlite:///{tmp_path / 'outbox.db'}")
        ) as url,
        seeded_database(url, [LOST, SENT, RECENT, WAITING]) as database,
    ):
        yield database


@pytest.fixture
def celery(tmp_path: Path) -> Iterator[CeleriacCelery]:
    """A Celery app on the memory broker, whose service queue starts empty."""
    app = create_celery(Settings(data_dir=tmp_path / ".celeriac"))
    drain(app)
    yield app
    drain(app)


@pytest.fixture
def outbox(db: Database, celery: CeleriacCelery) -> Iterator[Outbox]:
    box = Outbox(Lifecycle(db), Dispatcher(celery), redispatch_after=30.0)
    yield box
    box.close()


def drain(celery: CeleriacCelery) -> list[dict[str, Any]]:
    """Take every message off the service queue of ``D``/``svc``; their payloads, in order."""
    return queues.drain(celery, "D", "svc")


def refusing_celery() -> CeleriacCelery:
    """A Celery app whose broker (Redis, on a port where nothing listens) refuses at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return create_celery(Settings(broker_url=f"redis://127.0.0.1:{port}/0"))


def dispatched(db: Database, task_id: str, ago: dt.timedelta) -> None:
    with db.connect() as conn:
        conn.execute(
            update(_tasks).where(_tasks.c.id == task_id).values(dispatched_at=utcnow() - ago)
        )


def published_at(db: Database, task_id: str) -> dt.datetime | None:
    with db.peek() as conn:
        return conn.scalar(select(_tasks.c.published_at).where(_tasks.c.id == task_id))


def step(task_id: str, session_id: str | None = None) -> RunStep:
    return RunStep(
        id=task_id, task_id=task_id, session_id=session_id, deployment="D", service="svc", input={}
    )


def sent_task_ids(messages: list[dict[str, Any]]) -> list[str]:
    """The task ids that Celery messages (protocol 2: args, kwargs, embed) carry."""
    return [body[1]["task_id"] for body in messages]


def test_only_a_task_dispatched_long_ago_and_never_published_is_sent_again(
    db: Database, outbox: Outbox, celery: CeleriacCelery, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a task published long ago, one dispatched long ago by a sender that died before
    # publishing, one dispatched a moment ago, and one waiting for its session's turn
    dispatched(db, SENT, LONG_AGO)
    outbox.send(step(SENT))
    outbox.flush()
    assert drain(celery) != []
    dispatched(db, LOST, LONG_AGO)
    dispatched(db, RECENT, dt.timedelta(seconds=1))
    # When the outbox is swept
    swept = outbox.sweep()
    # Then only the lost task's step is sent again, and noted as published
    assert swept == [LOST]
    assert sent_task_ids(drain(celery)) == [LOST]
    assert published_at(db, LOST) is not None
    assert published_at(db, RECENT) is None and published_at(db, WAITING) is None
    # And the operator is told how many steps no sender had published
    assert caplog.messages == ["sent again 1 task(s) that no sender had published"]
    # And a second sweep sends nothing more, and says nothing
    assert outbox.sweep() == []
    assert drain(celery) == []
    assert len(caplog.messages) == 1


def test_a_task_dispatched_exactly_at_the_cutoff_is_not_sent_yet(
    db: Database, outbox: Outbox, celery: CeleriacCelery
) -> None:
    # Given a task dispatched long ago by a sender that died before publishing it
    dispatched(db, LOST, LONG_AGO)
    with db.peek() as conn:
        at = conn.scalar(select(_tasks.c.dispatched_at).where(_tasks.c.id == LOST))
    # When the outbox is swept with its cutoff at that very time, then it is not sent yet:
    # only a task dispatched before the cutoff is overdue
    assert outbox.sweep(cutoff=at) == []
    # But a microsecond later it is
    assert outbox.sweep(cutoff=at + dt.timedelta(microseconds=1)) == [LOST]
    assert sent_task_ids(drain(celery)) == [LOST]


@pytest.mark.parametrize(
    "status", [s.value for s in TaskStatus if s is not TaskStatus.QUEUED], ids=str
)
def test_a_task_that_left_its_queue_is_never_sent_again(
    db: Database, outbox: Outbox, celery: CeleriacCelery, status: str
) -> None:
    # Given two tasks dispatched long ago that no sender noted as published: one still
    # queued, one that a worker took since (its start or outcome recorded)
    dispatched(db, LOST, LONG_AGO)
    dispatched(db, SENT, LONG_AGO)
    with db.connect() as conn:
        conn.execute(update(_tasks).where(_tasks.c.id == SENT).values(status=status))
    # When the outbox is swept
    swept = outbox.sweep()
    # Then only the queued one is sent again: the other's step reached a worker already
    assert swept == [LOST]
    assert sent_task_ids(drain(celery)) == [LOST]


def test_a_sweep_the_broker_refuses_sends_nothing_and_the_next_sweep_sends_all(
    db: Database, outbox: Outbox, celery: CeleriacCelery, caplog: pytest.LogCaptureFixture
) -> None:
    # Given two tasks dispatched long ago by a sender that died before publishing them
    dispatched(db, LOST, LONG_AGO)
    dispatched(db, SENT, LONG_AGO)
    # When the outbox is swept while the broker refuses every message (nothing listens)
    refused = Outbox(Lifecycle(db), Dispatcher(refusing_celery()), redispatch_after=30.0)
    assert refused.sweep() == []
    refused.close()
    # Then the sweep stops at the refusal, the operator is told, and no task is noted as
    # published: none is lost for the next sweep
    assert "the broker refused a step sent again" in caplog.text
    assert published_at(db, LOST) is None and published_at(db, SENT) is None
    # And once the broker takes messages again, the next sweep sends both, once
    assert sorted(outbox.sweep()) == [LOST, SENT]
    assert sorted(sent_task_ids(drain(celery))) == [LOST, SENT]


def test_notes_that_could_not_be_written_are_written_once_the_database_is_back(
    db: Database, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a step the broker took while the tasks table cannot be written (renamed away)
    with db.connect() as conn:
        conn.execute(text("ALTER TABLE tasks RENAME TO tasks_away"))
    outbox.send(step(SENT))
    # When the notes are written, and fail
    outbox.flush()
    assert "could not note 1 published task(s)" in caplog.text
    # And are written again once the table is back
    with db.connect() as conn:
        conn.execute(text("ALTER TABLE tasks_away RENAME TO tasks"))
    outbox.flush()
    # Then the step is noted as published: the sweep will not send it again
    assert published_at(db, SENT) is not None


def test_a_sent_step_is_noted_by_the_writer_and_at_close(db: Database, outbox: Outbox) -> None:
    # When two steps are sent
    outbox.send(step(SENT))
    outbox.send(step(RECENT))
    # Then the writer notes both within a few of its periods, without a flush being asked for
    deadline = utcnow() + dt.timedelta(seconds=5)
    while published_at(db, RECENT) is None and utcnow() < deadline:
        pass
    assert published_at(db, SENT) is not None and published_at(db, RECENT) is not None
    # And a step sent just before closing is noted too
    outbox.send(step(LOST))
    outbox.close()
    assert published_at(db, LOST) is not None


def test_a_session_task_is_sent_again_with_its_session_context(
    tmp_path: Path, celery: CeleriacCelery, request: pytest.FixtureRequest
) -> None:
    # Given a task of a session whose Context holds a count, lost by its sender
    url = f"sqlite:///{tmp_path / 'session.db'}"
    with seeded_database(url, ["in-session"], session_id="s-1") as db:
        with db.connect() as conn:
            conn.execute(
                update(table_of(Session)).values(state={"count": 3}, active_task_id="in-session")
            )
        dispatched(db, "in-session", LONG_AGO)
        outbox = Outbox(Lifecycle(db), Dispatcher(celery), redispatch_after=30.0)
        # When the outbox is swept
        assert outbox.sweep() == ["in-session"]
        outbox.close()
    # Then the step carries the session, its Context, and asks for the Context back
    [message] = drain(celery)
    payload = message[1]
    assert payload["session_id"] == "s-1"
    assert payload["context"] == {"count": 3}
    assert payload["keep_context"] is True


def test_requeue_lost_takes_back_every_unfinished_dispatched_task(
    db: Database, outbox: Outbox
) -> None:
    # Given tasks running, waiting for input, queued and succeeded, all dispatched and
    # published, and one waiting for its session's turn
    statuses = {LOST: "running", SENT: "waiting_input", RECENT: "queued"}
    with db.connect() as conn:
        conn.execute(update(_tasks).values(dispatched_at=utcnow(), published_at=utcnow()))
        conn.execute(update(_tasks).where(_tasks.c.id == WAITING).values(dispatched_at=None))
        for task_id, status in statuses.items():
            conn.execute(update(_tasks).where(_tasks.c.id == task_id).values(status=status))
        done = "done"
        conn.execute(
            _tasks.insert().values(
                id=done,
                deployment_id=conn.scalar(select(_tasks.c.deployment_id).limit(1)),
                service="svc",
                input={},
                status=TaskStatus.SUCCEEDED.value,
                attempts=1,
                created_at=utcnow(),
                dispatched_at=utcnow(),
                published_at=utcnow(),
            )
        )
    # When the broker lost every message and the lost runs are queued again
    assert outbox.requeue_lost() == 3
    # Then the three unfinished tasks are queued and unpublished, the others unchanged
    with db.peek() as conn:
        rows = {r.id: r for r in conn.execute(select(_tasks))}
    for task_id in statuses:
        assert (rows[task_id].status, rows[task_id].published_at) == ("queued", None)
    assert rows[done].status == "succeeded" and rows[done].published_at is not None
    assert rows[WAITING].dispatched_at is None
    # And a sweep at once sends each of them
    assert sorted(outbox.sweep(cutoff=utcnow())) == sorted(statuses)


def test_a_task_another_sweeper_holds_is_skipped_until_it_lets_go(
    celery: CeleriacCelery,
) -> None:
    # (PostgreSQL only: SQLite has one writer at a time, so two sweeps cannot overlap.)
    with (
        fresh_postgres_database("celeriac_outbox") as url,
        seeded_database(url, [LOST]) as db,
        db.engine.connect() as other,
    ):
        outbox = Outbox(Lifecycle(db), Dispatcher(celery), redispatch_after=30.0)
        # Given a lost task that another control-plane consumer is sweeping (its row locked)
        dispatched(db, LOST, LONG_AGO)
        other.execute(select(_tasks.c.id).where(_tasks.c.id == LOST).with_for_update())
        # When this consumer sweeps meanwhile
        # Then it skips the task instead of waiting for it or sending it twice
        assert outbox.sweep() == []
        # And sends it once the other let go without sending it
        other.rollback()
        assert outbox.sweep() == [LOST]
        assert sent_task_ids(drain(celery)) == [LOST]
        outbox.close()
