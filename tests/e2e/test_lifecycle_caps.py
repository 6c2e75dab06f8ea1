"""Concurrency caps in the task lifecycle, on SQLite and on PostgreSQL: a capped service's
tasks are sent up to its limit (in all, and per value of its key), the others wait queued
and unsent, and every path that frees a slot hands it to the oldest waiting task that fits,
in the same transaction; no path sends past the cap, even with two API servers at once.
"""

from __future__ import annotations

import datetime as dt
import itertools
import queue
import random
import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select, update

import migrations
from app.control.lifecycle import Finished, Lifecycle, NewTask
from app.control.lifecycle.caps import group_of
from app.control.tasks import service_concurrency
from app.db import Database
from app.models import Deployment, Service, Task, TaskStatus, Worker
from app.models.base import table_of, utcnow
from tests.e2e.conftest import fresh_postgres_database
from workers.protocol import RunStep, StepFinished, StepStarted

_tasks = table_of(Task)
_deployments = table_of(Deployment)
_services = table_of(Service)
_workers = table_of(Worker)

#: Deployment ``D``'s services: two at once in all; three at once, one per ``user``; no cap.
SPEC: dict[str, Any] = {
    "name": "D",
    "services": {
        "capped": {"celeriac": {"concurrency": {"limit": 2}}},
        "keyed": {"celeriac": {"concurrency": {"limit": 3, "key": "user", "per-key": 1}}},
        "free": {"celeriac": {"time-limit": 60}},
    },
}
_numbers = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database holding deployment ``D`` (id 1) and its services' rows."""
    with (
        fresh_postgres_database("celeriac_caps")
        if request.param == "postgresql"
        else nullcontext(f"sqlite:///{tmp_path / 'caps.db'}")
    ) as found:
        migrations.upgrade(found)
        database = Database(found)
        with database.connect() as conn:
            conn.execute(
                _deployments.insert().values(
                    id=1,
                    name="D",
                    spec=SPEC,
                    source_yaml="",
                    base_path="",
                    version=1,
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
            )
            for name in SPEC["services"]:
                conn.execute(
                    _services.insert().values(
                        deployment_id=1, name=name, display_name=name, queue=f"q.{name}"
                    )
                )
        database.dispose()
        yield found


@pytest.fixture
def db(url: str) -> Iterator[Database]:
    database = Database(url)
    yield database
    database.dispose()


@pytest.fixture
def lifecycle(db: Database) -> Lifecycle:
    return Lifecycle(db)


def new(service: str, session_id: str | None = None, **run_input: Any) -> NewTask:
    """A new task of ``service`` of ``D``, with its cap as ``tasks/create`` gives it."""
    return NewTask(
        id=f"t{next(_numbers):05d}",
        deployment_id=1,
        version=1,
        service=service,
        input=run_input,
        session_id=session_id,
        concurrency=service_concurrency(SPEC, service),
    )


def submit(lifecycle: Lifecycle, service: str, **run_input: Any) -> tuple[str, bool]:
    """Store a task of its own (``tasks/run``); its id, and whether it may be sent now."""
    inserted = lifecycle.insert(new(service, **run_input), single_use_session=True)
    assert isinstance(inserted, tuple)
    task, turn = inserted
    assert (task.dispatched_at is not None) is turn.run_now
    return task.id, turn.run_now


def report(task_id: str, *, ok: bool = True, quick: bool = False, **more: Any) -> StepFinished:
    """A worker's end report of the task's run (with its start too, if ``quick``)."""
    now = time.time()
    return StepFinished(
        task_id=task_id,
        ok=ok,
        result="done" if ok else None,
        error=None if ok else {"type": "ValueError", "message": "boom"},
        event_count=0,
        events=[],
        worker="w-1",
        started_at=now,
        started_reported=not quick,
        at=now,
        **more,
    )


def ids(steps: Any) -> list[str]:
    return [step.task_id for step in steps]


def holding(db: Database, service: str) -> list[str]:
    """Tasks of the service that hold a slot: sent, and not ended nor retrying."""
    held = (TaskStatus.QUEUED.value, TaskStatus.RUNNING.value, TaskStatus.WAITING_INPUT.value)
    query = (
        select(_tasks.c.id)
        .where(
            _tasks.c.service == service,
            _tasks.c.dispatched_at.is_not(None),
            _tasks.c.status.in_(held),
        )
        .order_by(_tasks.c.id)
    )
    with db.peek() as conn:
        return list(conn.scalars(query))


def waiting(db: Database, service: str) -> list[str]:
    """Tasks of the service that are queued and were never sent."""
    query = (
        select(_tasks.c.id)
        .where(
            _tasks.c.service == service,
            _tasks.c.dispatched_at.is_(None),
            _tasks.c.status == TaskStatus.QUEUED.value,
        )
        .order_by(_tasks.c.id)
    )
    with db.peek() as conn:
        return list(conn.scalars(query))


def status(db: Database, task_id: str) -> str:
    with db.peek() as conn:
        return str(conn.scalar(select(_tasks.c.status).where(_tasks.c.id == task_id)))


# -- groups --------------------------------------------------------------------------------------


def test_a_tasks_group_is_the_json_of_its_key_field_and_a_long_one_is_hashed() -> None:
    keyed = {"limit": 3, "key": "user", "per-key": 1}
    assert group_of(None, {"user": "ann"}) is None
    assert group_of({"limit": 2}, {"user": "ann"}) == ""
    assert group_of(keyed, {"user": "ann"}) == '"ann"'
    assert group_of(keyed, {"user": 7}) == "7"
    assert group_of(keyed, {"user": {"b": 1, "a": 2}}) == '{"a":2,"b":1}'
    # A missing field is the value null: such tasks make one group
    assert group_of(keyed, {}) == group_of(keyed, {"user": None}) == "null"
    long = group_of(keyed, {"user": "x" * 500})
    assert long is not None and long.startswith("sha256:") and len(long) == 71
    assert long != group_of(keyed, {"user": "x" * 501})


# -- the limit -----------------------------------------------------------------------------------


def test_a_capped_service_sends_up_to_its_limit_and_the_rest_wait_unsent(
    db: Database, lifecycle: Lifecycle
) -> None:
    # When five tasks of a service capped at two are stored
    sent = [submit(lifecycle, "capped") for _ in range(5)]
    # Then the first two may be sent, and the three others wait, queued and never sent
    assert [run_now for _, run_now in sent] == [True, True, False, False, False]
    first, second, *rest = [task_id for task_id, _ in sent]
    assert holding(db, "capped") == [first, second]
    assert waiting(db, "capped") == rest
    # And a service without a cap sends all of its tasks
    assert all(submit(lifecycle, "free")[1] for _ in range(5))


def test_each_slot_freed_by_an_end_goes_to_the_oldest_waiting_task(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given two tasks running and three waiting, in order of arrival
    tasks = [submit(lifecycle, "capped")[0] for _ in range(5)]
    one, two, three, four, five = tasks
    lifecycle.start(StepStarted(task_id=one, worker="w-1", at=time.time(), inbox="i"))
    # When the running one succeeds, the next one fails, and then a quick run succeeds
    # (its start reported with its end)
    assert ids(lifecycle.finish(report(one)).admitted) == [three]
    assert ids(lifecycle.finish(report(two, ok=False)).admitted) == [four]
    assert ids(lifecycle.finish(report(three, quick=True)).admitted) == [five]
    # Then each end sent the oldest waiting task in its place, and never more than two held
    assert holding(db, "capped") == [four, five]
    assert waiting(db, "capped") == []
    # And an end reported again changes nothing, and sends no one
    again = lifecycle.finish(report(one))
    assert (again.status, again.admitted) == (None, ())
    assert holding(db, "capped") == [four, five]


def test_per_key_caps_each_value_of_the_key_and_the_limit_caps_them_all(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given a service capped at three in all and one per user: ann's second task waits
    # for ann's first, and dan's waits for a slot though he has none running
    ann, ann_again, bob, cat, dan, anonymous = (
        submit(lifecycle, "keyed", user=user) for user in ("ann", "ann", "bob", "cat", "dan", None)
    )
    assert [ann[1], ann_again[1], bob[1], cat[1], dan[1], anonymous[1]] == [
        True,
        False,
        True,
        True,
        False,
        False,
    ]
    # When ann's first task ends, ann's second is the oldest that fits: it goes
    assert ids(lifecycle.finish(report(ann[0])).admitted) == [ann_again[0]]
    # When bob's ends, dan's goes (ann's group is full again)
    assert ids(lifecycle.finish(report(bob[0])).admitted) == [dan[0]]
    # And a task without the field is in the group of null, and goes next
    assert ids(lifecycle.finish(report(cat[0])).admitted) == [anonymous[0]]
    assert holding(db, "keyed") == sorted([ann_again[0], dan[0], anonymous[0]])


def test_a_waiting_task_of_a_full_group_lets_a_later_one_of_another_group_go(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given ann running and ann's second task waiting: two slots are free
    first, _ = submit(lifecycle, "keyed", user="ann")
    second, sent = submit(lifecycle, "keyed", user="ann")
    assert not sent
    # When bob's task comes, it is sent past ann's: ann's group is full
    assert submit(lifecycle, "keyed", user="bob")[1]
    # And when ann's first ends, her second goes
    assert ids(lifecycle.finish(report(first)).admitted) == [second]


# -- early ends, retries -------------------------------------------------------------------------


def test_a_cancel_or_a_time_out_of_a_task_holding_a_slot_hands_it_on(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given two tasks holding the slots and three waiting
    one, two, three, four, five = (submit(lifecycle, "capped")[0] for _ in range(5))
    lifecycle.start(StepStarted(task_id=one, worker="w-1", at=time.time(), inbox="i"))
    # When a waiting task is cancelled, no slot is freed: nobody is sent
    assert lifecycle.cancel(1, five).following == []
    # When the running task is cancelled, the oldest waiting one is sent
    assert ids(lifecycle.cancel(1, one).following) == [three]
    # When a task sent but not started yet waits in the queue past its allowed wait
    with db.connect() as conn:
        conn.execute(
            update(_tasks).where(_tasks.c.id == two).values(expires_at=utcnow() - dt.timedelta(1))
        )
    assert ids(lifecycle.time_out_waiting(utcnow()).following) == [four]
    # When a run goes past its time limit and its worker did not stop it
    lifecycle.start(StepStarted(task_id=three, worker="w-1", at=time.time(), inbox="i"))
    with db.connect() as conn:
        conn.execute(
            update(_tasks)
            .where(_tasks.c.id == three)
            .values(started_at=utcnow() - dt.timedelta(hours=1), controls={"time-limit": 60})
        )
    assert lifecycle.time_out_overrun(utcnow(), grace=30).runs == [(three, 1)]
    # Then every task ended as asked, and the slots are held by the only one left
    assert [status(db, t) for t in (one, two, three, five)] == [
        "cancelled",
        "timed_out",
        "timed_out",
        "cancelled",
    ]
    assert holding(db, "capped") == [four]
    assert waiting(db, "capped") == []


def test_a_retried_task_waits_for_a_slot_like_a_new_one(db: Database, lifecycle: Lifecycle) -> None:
    # Given a task that failed and two others that hold the slots
    failed, _ = submit(lifecycle, "capped")
    lifecycle.finish(report(failed, ok=False))
    one, two = (submit(lifecycle, "capped")[0] for _ in range(2))
    # When it is retried by hand, no slot is free: it waits, queued and not sent
    assert lifecycle.retry(1, failed) is None
    assert (status(db, failed), waiting(db, "capped")) == ("queued", [failed])
    # And it is sent when a slot comes free
    assert ids(lifecycle.finish(report(one)).admitted) == [failed]
    assert holding(db, "capped") == [failed, two]


def test_a_run_retried_by_policy_frees_its_slot_and_waits_for_one_when_its_backoff_ends(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given two tasks holding the slots and one waiting
    one, two, three = (submit(lifecycle, "capped")[0] for _ in range(3))
    # When a run fails and its retry policy runs it again later, its slot goes on at once
    retrying = lifecycle.finish(report(one, ok=False, retry_in=0.0))
    assert (retrying.status, ids(retrying.admitted)) == (TaskStatus.RETRYING, [three])
    # When its backoff ran out, no slot is free: it waits, queued and not sent
    assert lifecycle.send_due(utcnow() + dt.timedelta(seconds=1), lambda step: True) == []
    assert (status(db, one), waiting(db, "capped")) == ("queued", [one])
    # Then it is sent again when a slot comes free, as its new run
    admitted = lifecycle.finish(report(two)).admitted
    assert [(step.task_id, step.run) for step in admitted] == [(one, 2)]


# -- sessions ------------------------------------------------------------------------------------


def test_a_session_task_takes_its_turn_then_a_slot_and_never_a_slot_before_its_turn(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given a session's two tasks of the capped service, and a task of its own
    session_id = lifecycle.open_session("D").id
    first = lifecycle.insert(new("capped", session_id))
    second = lifecycle.insert(new("capped", session_id))
    alone, _ = submit(lifecycle, "capped")
    assert isinstance(first, tuple) and isinstance(second, tuple)
    assert (first[1].run_now, second[1].run_now) == (True, False)
    # When the task of its own ends, a slot is free, but the session's second task waits
    # for its turn: nobody is sent
    assert lifecycle.finish(report(alone)).admitted == ()
    assert holding(db, "capped") == [first[0].id]
    # And when the session's first ends, its second takes the turn and the slot
    done = lifecycle.finish(report(first[0].id, keep_context=True, context={"n": 1}))
    assert done.following is None
    [step] = done.admitted
    assert (step.task_id, step.session_id, step.context) == (second[0].id, session_id, {"n": 1})
    assert holding(db, "capped") == [second[0].id]


def test_a_session_task_whose_turn_comes_waits_when_its_service_is_full(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given a session's task running, its next one waiting for its turn, and two tasks of
    # their own holding both slots once the first ends
    session_id = lifecycle.open_session("D").id
    first = lifecycle.insert(new("free", session_id))
    following = lifecycle.insert(new("capped", session_id))
    assert isinstance(first, tuple) and isinstance(following, tuple)
    one, _two = (submit(lifecycle, "capped")[0] for _ in range(2))
    # When the first ends, its next task takes the turn but finds no slot: it waits
    done = lifecycle.finish(report(first[0].id, keep_context=True, context={"n": 1}))
    assert (done.following, done.admitted) == (None, ())
    assert waiting(db, "capped") == [following[0].id]
    # And it is sent, in its session's Context, when a slot comes free
    [step] = lifecycle.finish(report(one)).admitted
    assert (step.task_id, step.context, step.keep_context) == (following[0].id, {"n": 1}, True)


# -- reloads, restarts ---------------------------------------------------------------------------


def test_a_reload_that_raises_the_cap_lets_waiting_tasks_go_at_the_sweep(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given two tasks holding the slots and three waiting
    tasks = [submit(lifecycle, "capped")[0] for _ in range(5)]
    # When a reload raises the cap to four, the sweep sends the two oldest waiting
    raised = {**SPEC, "services": {**SPEC["services"], "capped": _capped(4)}}
    _reload(db, raised, version=2)
    assert ids(lifecycle.admit_waiting()) == tasks[2:4]
    assert lifecycle.admit_waiting() == []
    # When another reload lowers it to one, nobody is sent until fewer than one hold a slot
    _reload(db, {**SPEC, "services": {**SPEC["services"], "capped": _capped(1)}}, version=3)
    for task_id in tasks[:3]:
        assert lifecycle.finish(report(task_id)).admitted == ()
    assert ids(lifecycle.finish(report(tasks[3])).admitted) == [tasks[4]]


def test_a_deployment_made_again_under_the_same_id_and_version_has_its_own_cap(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given a decision under deployment D's cap of two (SQLite may give the id of a deleted
    # deployment to a new one, at version 1 again)
    assert submit(lifecycle, "capped")[1]
    # When D is deleted and made again, under the same id and version, with a cap of one
    with db.connect() as conn:
        conn.execute(_deployments.delete())
        conn.execute(
            _deployments.insert().values(
                id=1,
                name="D",
                spec={**SPEC, "services": {"capped": _capped(1)}},
                source_yaml="",
                base_path="",
                version=1,
                created_at=utcnow() + dt.timedelta(seconds=1),
                updated_at=utcnow(),
            )
        )
        conn.execute(
            _services.insert().values(deployment_id=1, name="capped", display_name="c", queue="q")
        )
    # Then its cap is the new one
    assert [submit(lifecycle, "capped")[1] for _ in range(2)] == [True, False]


def test_a_restart_of_the_embedded_server_resends_the_tasks_holding_slots_and_no_other(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given two tasks holding the slots (one running) and one waiting
    one, two, three = (submit(lifecycle, "capped")[0] for _ in range(3))
    lifecycle.start(StepStarted(task_id=one, worker="w-1", at=time.time(), inbox="i"))
    lifecycle.note_published([one, two])
    # When the embedded broker lost every message and the server queues its tasks again
    assert lifecycle.requeue_lost() == 2
    sent: list[RunStep] = []
    lifecycle.resend_overdue(utcnow() + dt.timedelta(seconds=1), lambda s: sent.append(s) or True)
    # Then only the tasks that held the slots are sent again, and they still hold them
    assert sorted(ids(sent)) == [one, two]
    assert (holding(db, "capped"), waiting(db, "capped")) == ([one, two], [three])


def test_a_task_whose_lease_ran_out_is_sent_again_in_the_slot_it_holds(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given two running tasks holding the slots, and one waiting; one's worker went silent
    one, two, three = (submit(lifecycle, "capped")[0] for _ in range(3))
    for task_id in (one, two):
        lifecycle.start(StepStarted(task_id=task_id, worker="w-1", at=time.time(), inbox="i"))
    with db.connect() as conn:
        conn.execute(
            insert(_workers).values(
                name="w-2",
                host="h",
                pid=1,
                queues=[],
                deployments=[],
                started_at=utcnow(),
                last_seen=utcnow(),
            )
        )
        conn.execute(
            update(_tasks)
            .where(_tasks.c.id == one)
            .values(held_at=utcnow() - dt.timedelta(hours=1))
        )
    # When its lease is recovered, it is sent again in its slot, and the waiting one waits
    recovered = lifecycle.recover(dt.timedelta(minutes=1), lambda step: True)
    assert [r.task_id for r in recovered] == [one]
    assert (holding(db, "capped"), waiting(db, "capped")) == ([one, two], [three])


# -- statements on the hot path ------------------------------------------------------------------


def test_a_task_of_a_service_without_a_cap_is_stored_and_ended_as_before(
    db: Database, lifecycle: Lifecycle
) -> None:
    # Given the statements sent to the database
    statements: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engines = {db.engine, db._autocommit}
    for engine in engines:
        event.listen(engine, "before_cursor_execute", note)
    try:
        # When a task of a service without a cap is run on its own, and ends quickly
        task_id, sent = submit(lifecycle, "free")
        stored = list(statements)
        lifecycle.finish(report(task_id, quick=True))
        ended = statements[len(stored) :]
        # And a task of a capped service is
        capped, _ = submit(lifecycle, "capped")
        capped_stored = statements[len(stored) + len(ended) :]
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", note)
    # Then the first is one INSERT, and its end one statement on PostgreSQL (where an outcome
    # and its attempt are one statement): nothing of the caps on their way
    assert sent and len(stored) == 1 and stored[0].lstrip().startswith("INSERT INTO tasks")
    if db.engine.dialect.name == "postgresql":
        assert len(ended) == 1
    assert "services" not in " ".join(stored + ended)
    # And the capped one takes its service's row first
    assert len(capped_stored) > 1 and "services" in capped_stored[0]
    assert status(db, capped) == "queued"


# -- at once -------------------------------------------------------------------------------------


def test_two_api_servers_and_a_control_plane_at_once_never_send_past_the_cap(
    url: str, db: Database
) -> None:
    # Given two API servers and a control plane (three engines on one database; one on
    # SQLite, whose writers take turns in a process), each with its lifecycle
    servers = [Database(url) for _ in range(3)] if db.engine.dialect.name != "sqlite" else [db]
    lifecycles = [Lifecycle(database) for database in servers]
    sendable: queue.Queue[str] = queue.Queue()
    held_most = 0
    stop = threading.Event()
    total = 60

    def watch() -> None:
        nonlocal held_most
        while not stop.is_set():
            held_most = max(held_most, len(holding(db, "keyed")))

    def api(n: int) -> None:
        for i in range(total // 4):
            user = ("ann", "bob", "cat", "dan")[(n + i) % 4]
            task_id, run_now = submit(lifecycles[n % len(lifecycles)], "keyed", user=user)
            if run_now:
                sendable.put(task_id)

    def worker(n: int) -> None:
        plane = lifecycles[-1]
        while not stop.is_set():
            try:
                task_id = sendable.get(timeout=0.05)
            except queue.Empty:
                continue
            time.sleep(random.random() * 0.01)
            finished: Finished = plane.finish(report(task_id, quick=bool(n % 2)))
            for step in finished.admitted:
                sendable.put(step.task_id)

    threads = [threading.Thread(target=watch)]
    threads += [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    senders = [threading.Thread(target=api, args=(n,)) for n in range(4)]
    for thread in threads + senders:
        thread.start()
    try:
        # When four clients send sixty tasks through them while four workers end them
        for sender in senders:
            sender.join()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with db.peek() as conn:
                done = conn.scalar(
                    select(func.count()).where(_tasks.c.status == TaskStatus.SUCCEEDED.value)
                )
            if done == total:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for database in servers:
            if database is not db:
                database.dispose()
    # Then every task ran and none waits: no slot was lost on the way
    assert (done, waiting(db, "keyed"), holding(db, "keyed")) == (total, [], [])
    # And never more than three held slots at once (one per user, four users)
    assert held_most == 3


def _capped(limit: int) -> dict[str, Any]:
    return {"celeriac": {"concurrency": {"limit": limit}}}


def _reload(db: Database, spec: dict[str, Any], version: int) -> None:
    with db.connect() as conn:
        conn.execute(update(_deployments).values(spec=spec, version=version))
