"""PostgreSQL notifications: the recorder's NOTIFY wakes waiters in another process's Listener."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import create_engine

from app.control.notifications import Listener, announce
from app.control.waiter import RELAYED_POLL, TaskWaiter
from tests.e2e.conftest import poll

ENDED = "ended"


@pytest.mark.e2e
def test_a_committed_announce_wakes_the_waiter_and_a_rolled_back_one_does_not(
    postgres_url: str,
) -> None:
    # Given a waiter relayed by a Listener on the database (so it polls only every second)
    waiter = TaskWaiter()
    listener = Listener(postgres_url, waiter)
    listener.start()
    engine = create_engine(postgres_url)
    try:
        poll(lambda: waiter.relayed, bool, 10, "the Listener listening")
        ended: set[str] = set()
        looks: dict[str, list[float]] = {"t-1": [], "t-2": []}
        results: dict[str, str | None] = {}

        def wait(task_id: str) -> None:
            def look() -> str | None:
                looks[task_id].append(time.monotonic())
                return ENDED if task_id in ended else None

            results[task_id] = waiter.wait(task_id, 2, look)

        threads = [threading.Thread(target=wait, args=(t,), daemon=True) for t in looks]
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        # When both tasks end, one announced in a transaction that commits, the other in one
        # that rolls back
        ended.update(looks)
        with engine.connect() as conn, conn.begin() as transaction:
            announce(conn, "t-2")
            transaction.rollback()
        committed_at = time.monotonic()
        with engine.begin() as conn:
            announce(conn, "t-1")
        for thread in threads:
            thread.join(5)
        # Then the first waiter looked again within a moment; the second heard nothing and
        # looked again only at its safety-net poll
        assert results == {"t-1": ENDED, "t-2": ENDED}
        assert len(looks["t-1"]) == 2
        assert looks["t-1"][1] - committed_at < 0.5
        assert len(looks["t-2"]) == 2
        assert looks["t-2"][1] - looks["t-2"][0] >= RELAYED_POLL[0] - 0.05
    finally:
        listener.stop()
        engine.dispose()
    # And once the Listener stops, waiters poll again on their own
    poll(lambda: waiter.relayed, lambda relayed: not relayed, 5, "the relay ended")


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
