"""The task lifecycle's idempotency keys, on SQLite and on PostgreSQL: a key is claimed with
its task in one transaction, names that task for the same request while it lives, refuses
another request, and is free again once it expired (the claim's upsert takes its row over,
in each database's dialect).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

import migrations
from app.control.lifecycle import Lifecycle, MultitaskStrategy, NewTask, Replay, RequestKey
from app.db import Database
from app.errors import Conflict
from app.models import Deployment, IdempotencyKey, Session, Task
from app.models.base import table_of, utcnow
from tests.e2e.conftest import fresh_postgres_database

_tasks = table_of(Task)
_sessions = table_of(Session)
_keys = table_of(IdempotencyKey)
_deployments = table_of(Deployment)

KEY = RequestKey("order-42", "a" * 64)
OTHER_REQUEST = RequestKey("order-42", "b" * 64)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated database holding deployments ``D`` (id 1) and ``E`` (id 2)."""
    with (
        fresh_postgres_database("celeriac_keys")
        if request.param == "postgresql"
        else nullcontext(f"sqlite:///{tmp_path / 'keys.db'}")
    ) as url:
        migrations.upgrade(url)
        database = Database(url)
        try:
            with database.connect() as conn:
                for number, name in ((1, "D"), (2, "E")):
                    conn.execute(
                        _deployments.insert().values(
                            id=number,
                            name=name,
                            spec={},
                            source_yaml="",
                            base_path="",
                            version=1,
                            created_at=utcnow(),
                            updated_at=utcnow(),
                        )
                    )
            yield database
        finally:
            database.dispose()


@pytest.fixture
def lifecycle(db: Database) -> Lifecycle:
    return Lifecycle(db)


def new(task_id: str, deployment_id: int = 1, **fields: Any) -> NewTask:
    return NewTask(
        id=task_id, deployment_id=deployment_id, version=1, service="svc", input={}, **fields
    )


def stored(db: Database) -> dict[str, Any]:
    """What the database holds: task ids, session count, and keys with their task."""
    with db.peek() as conn:
        return {
            "tasks": sorted(conn.scalars(select(_tasks.c.id))),
            "sessions": conn.scalar(select(func.count()).select_from(_sessions)),
            "keys": sorted(
                tuple(row)
                for row in conn.execute(
                    select(
                        _keys.c.deployment_id, _keys.c.key, _keys.c.request_hash, _keys.c.task_id
                    )
                )
            ),
        }


def test_a_key_is_stored_with_its_task_and_the_same_request_again_replays_it(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given a task stored under a key
    inserted = lifecycle.insert(new("t1"), key=KEY)
    assert isinstance(inserted, tuple) and inserted[0].id == "t1"
    before = stored(db)
    assert before["tasks"] == ["t1"] and before["sessions"] == 1
    assert before["keys"] == [(1, KEY.key, KEY.request_hash, "t1")]
    # When the same request comes again under the key, as another task
    again = lifecycle.insert(new("t2"), key=KEY)
    # Then it is the first task, replayed, and nothing was stored: no task, no session
    assert again == Replay("t1")
    assert stored(db) == before


def test_another_request_under_a_live_key_is_refused_and_changes_nothing(
    db: Database, lifecycle: Lifecycle
) -> None:
    assert isinstance(lifecycle.insert(new("t1"), key=KEY), tuple)
    before = stored(db)
    with pytest.raises(Conflict) as refused:
        lifecycle.insert(new("t2"), key=OTHER_REQUEST)
    assert refused.value.message.startswith(
        "Idempotency-Key 'order-42' was used with a different request in the last 86400 s"
    )
    assert list(refused.value.errors) == ["Idempotency-Key"]
    assert stored(db) == before


def test_a_key_is_one_deployments_own(db: Database, lifecycle: Lifecycle) -> None:
    # The same key and request on another deployment is another task
    assert isinstance(lifecycle.insert(new("t1"), key=KEY), tuple)
    assert isinstance(lifecycle.insert(new("t2", deployment_id=2), key=KEY), tuple)
    assert [(k[0], k[3]) for k in stored(db)["keys"]] == [(1, "t1"), (2, "t2")]


def test_the_same_request_with_its_own_task_id_is_replayed_not_refused(
    db: Database, lifecycle: Lifecycle
) -> None:
    # A task id of the client's, already taken by the key's own task, is the replay
    assert isinstance(lifecycle.insert(new("mine"), key=KEY), tuple)
    assert lifecycle.insert(new("mine"), key=KEY) == Replay("mine")
    # Under another key, that id is taken (None), and that key is not kept
    assert lifecycle.insert(new("mine"), key=RequestKey("other", "c" * 64)) is None
    assert [k[1] for k in stored(db)["keys"]] == [KEY.key]


def test_a_replay_of_a_session_task_is_not_refused_for_the_busy_session(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given a session task stored under a key, which holds its session
    with db.connect() as conn:
        conn.execute(_sessions.insert().values(id="s1", deployment_id=1, state={}))
    task = new("t1", session_id="s1")
    assert isinstance(lifecycle.insert(task, strategy=MultitaskStrategy.REJECT, key=KEY), tuple)
    before = stored(db)
    # When the same request comes again, refusing a busy session
    again = lifecycle.insert(new("t2", session_id="s1"), strategy=MultitaskStrategy.REJECT, key=KEY)
    # Then it is the replay of the first, not a 409 of the session
    assert again == Replay("t1")
    assert stored(db) == before
    # While a request without a key is refused for the busy session
    with pytest.raises(Conflict, match="busy"):
        lifecycle.insert(new("t3", session_id="s1"), strategy=MultitaskStrategy.REJECT)


def test_eight_inserts_under_one_key_at_once_store_one_task(
    db: Database, lifecycle: Lifecycle
) -> None:
    # When eight threads store a task each (their own ids, sessions for each) under one key
    start = threading.Barrier(8)

    def insert(n: int) -> Any:
        start.wait(timeout=10)
        return lifecycle.insert(new(f"t{n}"), key=KEY)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(insert, range(8)))
    # Then one stored its task, and the seven others got it as their replay
    [winner] = [r[0].id for r in results if isinstance(r, tuple)]
    assert sorted(results, key=lambda r: isinstance(r, tuple))[:7] == [Replay(winner)] * 7
    assert stored(db) == {
        "tasks": [winner],
        "sessions": 1,
        "keys": [(1, KEY.key, KEY.request_hash, winner)],
    }


def test_a_task_refused_stores_no_key(db: Database, lifecycle: Lifecycle) -> None:
    # A deployment version that changed since it was read: neither task nor key is stored
    stale = NewTask(id="t1", deployment_id=1, version=2, service="svc", input={})
    assert lifecycle.insert(stale, single_use_session=True, key=KEY) is None
    assert stored(db) == {"tasks": [], "sessions": 0, "keys": []}


def test_an_expired_key_is_free_again_and_expired_keys_are_purged(db: Database) -> None:
    # Given keys that live a tenth of a second, one claimed for task t1, one for t2
    lifecycle = Lifecycle(db, key_lifetime=0.1)
    assert isinstance(lifecycle.insert(new("t1"), single_use_session=True, key=KEY), tuple)
    other = RequestKey("other", "c" * 64)
    assert isinstance(lifecycle.insert(new("t2"), single_use_session=True, key=other), tuple)
    # When they expired and a request comes under the first key, another one
    time.sleep(0.2)
    inserted = lifecycle.insert(new("t3"), single_use_session=True, key=OTHER_REQUEST)
    # Then it is stored as a new task, the key now names it, and the other expired key is gone
    assert isinstance(inserted, tuple) and inserted[0].id == "t3"
    after = stored(db)
    assert after["tasks"] == ["t1", "t2", "t3"]
    assert after["keys"] == [(1, KEY.key, OTHER_REQUEST.request_hash, "t3")]


def test_a_key_expires_by_its_own_time_only(db: Database, lifecycle: Lifecycle) -> None:
    # A key claimed a day and a second ago is free; one claimed a day less a minute ago holds
    assert isinstance(lifecycle.insert(new("t1"), key=KEY), tuple)
    other = RequestKey("other", "c" * 64)
    assert isinstance(lifecycle.insert(new("t2"), key=other), tuple)
    with db.connect() as conn:
        conn.execute(
            update(_keys)
            .where(_keys.c.key == KEY.key)
            .values(created_at=utcnow() - dt.timedelta(days=1, seconds=1))
        )
        conn.execute(
            update(_keys)
            .where(_keys.c.key == other.key)
            .values(created_at=utcnow() - dt.timedelta(days=1) + dt.timedelta(minutes=1))
        )
    assert isinstance(lifecycle.insert(new("t3"), key=OTHER_REQUEST), tuple)
    assert lifecycle.insert(new("t4"), key=other) == Replay("t2")
    assert {k[1]: k[3] for k in stored(db)["keys"]} == {KEY.key: "t3", other.key: "t2"}
