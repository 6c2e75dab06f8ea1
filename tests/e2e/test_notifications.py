"""PostgreSQL notifications: changes to tasks wake waiters through another process's Listener."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

import migrations
from app.control.notifications import Listener
from app.control.waiter import RELAYED_POLL, TaskWaiter
from app.db import Database
from app.models import Deployment, Event, Session, Task
from tests.e2e.conftest import poll

ENDED = "ended"
TASKS = ("t-1", "t-2", "t-3")


@pytest.fixture
def db(postgres_url: str) -> Iterator[Database]:
    """The migrated database holding one deployment, one session and three queued tasks."""
    migrations.upgrade(postgres_url)
    database = Database(postgres_url)
    with database.begin() as session:
        deployment = Deployment(name="D", spec={}, source_yaml="", base_path="")
        session.add(deployment)
        session.flush()
        session.add(Session(id="s", deployment_id=deployment.id))
        session.add_all(
            Task(id=t, deployment_id=deployment.id, session_id="s", service="svc", input={})
            for t in TASKS
        )
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def waiter(postgres_url: str, db: Database) -> Iterator[TaskWaiter]:
    """A waiter relayed by a Listener on the database (so it polls only every second)."""
    relayed = TaskWaiter()
    listener = Listener(postgres_url, relayed)
    listener.start()
    try:
        poll(lambda: relayed.relayed, bool, 10, "the Listener listening")
        yield relayed
    finally:
        listener.stop()
    # Once the Listener stops, waiters poll again on their own
    poll(lambda: relayed.relayed, lambda on: not on, 5, "the relay ended")


def second_looks(waiter: TaskWaiter, change: Callable[[], None]) -> dict[str, float]:
    """Wait on every task, make ``change``, and return how long after it each waiter looked
    again (its first look is at once)."""
    looks: dict[str, list[float]] = {t: [] for t in TASKS}

    def wait(task_id: str) -> None:
        def look() -> str | None:
            looks[task_id].append(time.monotonic())
            return ENDED if len(looks[task_id]) > 1 else None

        waiter.wait(task_id, 5, look)

    threads = [threading.Thread(target=wait, args=(t,), daemon=True) for t in TASKS]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    changed_at = time.monotonic()
    change()
    for thread in threads:
        thread.join(5)
    return {t: looks[t][1] - changed_at for t in TASKS}


@pytest.mark.e2e
def test_a_committed_status_change_wakes_its_waiter_and_others_do_not(
    db: Database, waiter: TaskWaiter
) -> None:
    tasks = Task.__table__

    def change() -> None:
        # t-1's status changes and commits; t-2's changes but rolls back; t-3 changes, but
        # not its status
        with db.connect() as conn:
            conn.execute(tasks.update().where(tasks.c.id == "t-1").values(status="succeeded"))
        with db.engine.connect() as conn, conn.begin() as transaction:
            conn.execute(tasks.update().where(tasks.c.id == "t-2").values(status="failed"))
            transaction.rollback()
        with db.connect() as conn:
            conn.execute(tasks.update().where(tasks.c.id == "t-3").values(inbox="q"))

    after = second_looks(waiter, change)
    # Only t-1's waiter looked again at once; the others at the relayed safety-net poll
    assert after["t-1"] < 0.5
    assert after["t-2"] >= RELAYED_POLL[0] - 0.3
    assert after["t-3"] >= RELAYED_POLL[0] - 0.3


@pytest.mark.e2e
def test_a_stored_event_of_the_workflow_wakes_its_waiter_and_a_client_event_does_not(
    db: Database, waiter: TaskWaiter
) -> None:
    def change() -> None:
        with db.begin() as session:
            row = {"seq": 0, "type": "E", "qualified_name": "m.E", "data": {}}
            session.add(Event(task_id="t-1", direction="out", **row))
            session.add(Event(task_id="t-2", direction="in", **row))

    after = second_looks(waiter, change)
    assert after["t-1"] < 0.5
    assert after["t-2"] >= RELAYED_POLL[0] - 0.3


@pytest.mark.e2e
def test_a_listener_that_cannot_reach_the_database_relays_nothing(postgres_url: str) -> None:
    waiter = TaskWaiter()
    listener = Listener(postgres_url.replace("/celeriac_e2e_", "/no_such_db_"), waiter)
    listener.start()
    try:
        time.sleep(1.5)
        assert waiter.relayed is False
    finally:
        listener.stop()
