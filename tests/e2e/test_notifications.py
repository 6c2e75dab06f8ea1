"""PostgreSQL notifications: changes to tasks wake waiters through another process's Listener."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from alembic import command

from app.control.notifications import CHANNEL, Listener
from app.control.waiter import RELAYED_POLL, Outcome, TaskWaiter
from app.db import Database
from app.models import Event, Task
from migrations import alembic_config
from tests.e2e.conftest import seeded_database
from tests.support.processes import poll

#: What a waiter's look finds (the tests' tasks never really end).
ENDED = Outcome("looked", None, None)
TASKS = ("t-1", "t-2", "t-3")


@pytest.fixture
def db(postgres_url: str) -> Iterator[Database]:
    """The migrated database holding one deployment, one session and three queued tasks."""
    with seeded_database(postgres_url, TASKS, session_id="s") as database:
        yield database


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


def woken(waiter: TaskWaiter, change: Callable[[], None]) -> dict[str, tuple[float, Outcome]]:
    """Wait on every task, make ``change``, and return, for each waiter, how long after the
    change it woke (took an outcome passed on, or looked again: its first look is at once)
    and the outcome it ended with."""
    woke: dict[str, tuple[float, Outcome]] = {}

    def wait(task_id: str) -> None:
        looks = 0

        def look() -> Outcome | None:
            nonlocal looks
            looks += 1
            return ENDED if looks > 1 else None

        outcome = waiter.wait(task_id, 5, look)
        assert outcome is not None
        woke[task_id] = (time.monotonic() - changed_at, outcome)

    threads = [threading.Thread(target=wait, args=(t,), daemon=True) for t in TASKS]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    changed_at = time.monotonic()
    change()
    for thread in threads:
        thread.join(5)
    return woke


@pytest.mark.e2e
def test_a_committed_status_change_wakes_its_waiter_and_others_do_not(
    db: Database, waiter: TaskWaiter
) -> None:
    tasks = Task.__table__

    def change() -> None:
        # t-1's status changes and commits; t-2's changes but rolls back; t-3 changes, but
        # not its status
        with db.connect() as conn:
            ended = {"status": "succeeded", "result": {"answer": 42}}
            conn.execute(tasks.update().where(tasks.c.id == "t-1").values(**ended))
        with db.engine.connect() as conn, conn.begin() as transaction:
            conn.execute(tasks.update().where(tasks.c.id == "t-2").values(status="failed"))
            transaction.rollback()
        with db.connect() as conn:
            conn.execute(tasks.update().where(tasks.c.id == "t-3").values(inbox="q"))

    woke = woken(waiter, change)
    # Only t-1's waiter woke at once, and took the outcome from the notification without a
    # look; the others looked again at the relayed safety-net poll
    assert woke["t-1"][0] < 0.5
    assert woke["t-1"][1] == Outcome("succeeded", {"answer": 42}, None)
    assert woke["t-2"][0] >= RELAYED_POLL[0] - 0.3
    assert woke["t-3"][0] >= RELAYED_POLL[0] - 0.3
    assert woke["t-2"][1] == woke["t-3"][1] == ENDED


@pytest.mark.e2e
def test_a_change_that_is_not_an_end_or_too_large_to_notify_wakes_the_waiter_to_look(
    db: Database, waiter: TaskWaiter
) -> None:
    tasks = Task.__table__
    large = "x" * 8000  # PostgreSQL refuses a notification of 8000 bytes or more

    def change() -> None:
        with db.connect() as conn:
            conn.execute(tasks.update().where(tasks.c.id == "t-1").values(status="running"))
            conn.execute(
                tasks.update().where(tasks.c.id == "t-2").values(status="failed", result=large)
            )

    woke = woken(waiter, change)
    # Both woke at once, and found the task by looking, as nothing came with the notification
    for task in ("t-1", "t-2"):
        assert woke[task] == (pytest.approx(0, abs=0.5), ENDED)
    assert woke["t-3"][0] >= RELAYED_POLL[0] - 0.3


@pytest.mark.e2e
def test_a_stored_event_of_the_workflow_wakes_its_waiter_and_a_client_event_does_not(
    db: Database, waiter: TaskWaiter
) -> None:
    def change() -> None:
        with db.begin() as session:
            row = {"seq": 0, "type": "E", "qualified_name": "m.E", "data": {}}
            session.add(Event(task_id="t-1", direction="out", **row))
            session.add(Event(task_id="t-2", direction="in", **row))

    woke = woken(waiter, change)
    assert woke["t-1"] == (pytest.approx(0, abs=0.5), ENDED)
    assert woke["t-2"][0] >= RELAYED_POLL[0] - 0.3


class RecordingWaiter(TaskWaiter):
    """A waiter that keeps every relay state it was told, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.told: list[bool] = []

    def set_relayed(self, relayed: bool) -> None:
        self.told.append(relayed)
        super().set_relayed(relayed)


@pytest.mark.e2e
def test_a_listener_relays_only_once_it_reaches_the_database(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a Listener on a database that does not exist yet
    dsn = postgres_url.replace("postgresql+psycopg", "postgresql")
    name = f"{dsn.rsplit('/', 1)[1]}_later"
    waiter = RecordingWaiter()
    listener = Listener(f"{postgres_url}_later", waiter)
    listener.start()
    try:
        # When it has tried twice and failed
        poll(
            lambda: caplog.text.count("lost the database notification channel"),
            lambda failures: failures >= 2,
            10,
            "two failed attempts to listen",
        )
        # Then it never told its waiters that changes were relayed
        assert True not in waiter.told
        assert waiter.relayed is False
        # And once the database exists, it listens, and says so
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        poll(lambda: waiter.relayed, bool, 10, "the Listener relaying")
    finally:
        listener.stop()
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.e2e
def test_downgraded_below_0006_a_status_change_notifies_only_the_task_id(
    postgres_url: str, db: Database
) -> None:
    tasks = Task.__table__
    dsn = postgres_url.replace("postgresql+psycopg", "postgresql")

    def payload_of_a_change(task_id: str) -> str:
        with psycopg.connect(dsn, autocommit=True) as listening:
            listening.execute(f"LISTEN {CHANNEL}")
            with db.connect() as conn:
                conn.execute(tasks.update().where(tasks.c.id == task_id).values(status="failed"))
            return next(listening.notifies(timeout=5)).payload

    assert json.loads(payload_of_a_change("t-1"))["status"] == "failed"
    command.downgrade(alembic_config(postgres_url), "0005")
    assert payload_of_a_change("t-2") == "t-2"
    command.upgrade(alembic_config(postgres_url), "head")
    assert json.loads(payload_of_a_change("t-3"))["id"] == "t-3"
