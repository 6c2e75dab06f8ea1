"""Leases on a migrated SQLite database and the memory broker: a running task that no live
worker holds any more is queued and sent again, through the lifecycle, and recorded once."""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

import migrations
from app.control.dispatch import Dispatcher
from app.control.leases import Leases
from app.control.lifecycle import Lifecycle, NewTask
from app.control.outbox import Outbox
from app.control.recorder import Recorder
from app.control.waiter import TaskWaiter
from app.db import Database
from app.models import Deployment, Session, Task, TaskAttempt, TaskStatus, Worker
from app.models.base import table_of
from app.orchestrator import sweep_period
from config.settings import Settings
from tests.support import queues
from workers.celery_app import CeleriacCelery, create_celery
from workers.protocol import Heartbeat, StepEvent, StepFinished, StepStarted, service_queue

#: The heartbeat interval of these tests: leases last three of them.
INTERVAL = 10.0
LEASE = 3 * INTERVAL

_tasks = table_of(Task)
_attempts = table_of(TaskAttempt)
_workers = table_of(Worker)
_ids = itertools.count()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A migrated SQLite database holding deployment ``D``."""
    url = f"sqlite:///{tmp_path / 'leases.db'}"
    migrations.upgrade(url)
    database = Database(url)
    with database.begin() as session:
        session.add(Deployment(id=1, name="D", spec={}, source_yaml="", base_path=""))
    yield database
    database.dispose()


@pytest.fixture
def celery(tmp_path: Path) -> Iterator[CeleriacCelery]:
    """A Celery app on the memory broker, whose service queue starts empty."""
    app = create_celery(Settings(data_dir=tmp_path / ".celeriac"))
    sent(app)
    yield app
    sent(app)


@pytest.fixture
def lifecycle(db: Database) -> Lifecycle:
    return Lifecycle(db)


@pytest.fixture
def leases(lifecycle: Lifecycle, celery: CeleriacCelery) -> Leases:
    return Leases(lifecycle, Dispatcher(celery), heartbeat_interval=INTERVAL)


@pytest.fixture
def recorder(db: Database, lifecycle: Lifecycle, celery: CeleriacCelery) -> Iterator[Recorder]:
    dispatcher = Dispatcher(celery)
    outbox = Outbox(lifecycle, dispatcher, redispatch_after=30.0)
    yield Recorder(db, lifecycle, TaskWaiter(), dispatcher, outbox)
    outbox.close()


def sent(celery: CeleriacCelery) -> list[dict[str, Any]]:
    """Take every step off the service queue of ``D``/``svc``: their payloads, in order."""
    return [payload[1] for payload in queues.drain(celery, "D", "svc")]


def running(
    lifecycle: Lifecycle,
    ago: float,
    worker: str = "w1",
    session: str | None = None,
    at: float | None = None,
) -> str:
    """A task whose start ``worker`` reported ``ago`` seconds ago (or at ``at``); its id."""
    task_id = f"t-{next(_ids)}"
    new = NewTask(
        id=task_id, deployment_id=1, version=1, service="svc", input={"n": 1}, session_id=session
    )
    assert lifecycle.insert(new, single_use_session=session is None) is not None
    lifecycle.note_published([task_id])
    at = time.time() - ago if at is None else at
    lifecycle.start(StepStarted(task_id=task_id, worker=worker, at=at, inbox=f"in-{worker}"))
    return task_id


def beat(
    recorder: Recorder,
    worker: str,
    tasks: list[str] | None,
    ago: float = 0.0,
    started_ago: float = 3600.0,
    at: float | None = None,
) -> None:
    """A heartbeat of ``worker`` sent ``ago`` seconds ago (or at ``at``), listing ``tasks``,
    from a process started ``started_ago`` seconds ago (by default before any task of these
    tests)."""
    at = time.time() - ago if at is None else at
    recorder.heartbeat(
        Heartbeat(
            worker=worker,
            host="h",
            pid=1,
            queues=[service_queue("D", "svc")],
            deployments=["D"],
            started_at=time.time() - started_ago,
            at=at,
            tasks=tasks,
        )
    )


def row(db: Database, task_id: str) -> Any:
    with db.peek() as conn:
        return conn.execute(select(_tasks).where(_tasks.c.id == task_id)).one()


def attempts(db: Database, task_id: str) -> list[tuple[Any, ...]]:
    """A task's runs: number, worker, outcome and the start of its error's message."""
    with db.peek() as conn:
        rows = conn.execute(
            select(_attempts).where(_attempts.c.task_id == task_id).order_by(_attempts.c.attempt)
        ).all()
    return [
        (r.attempt, r.worker, r.outcome, r.error["message"][:26] if r.error else None) for r in rows
    ]


def outcome(task_id: str, result: str, worker: str, *, started_reported: bool = True) -> Any:
    now = time.time()
    stop = StepEvent(task_id=task_id, seq=0, event={"type": "StopEvent", "data": {}}, at=now)
    return StepFinished(
        task_id=task_id,
        ok=True,
        result=result,
        error=None,
        event_count=1,
        events=[stop.encode()],
        worker=worker,
        started_at=now,
        started_reported=started_reported,
        at=now,
    )


def test_a_task_no_worker_holds_is_queued_and_sent_again_once_its_lease_runs_out(
    db: Database,
    leases: Leases,
    lifecycle: Lifecycle,
    recorder: Recorder,
    celery: CeleriacCelery,
) -> None:
    # Given a task whose worker last held it 40 s ago, one held 20 s ago, and a heartbeat
    # of another worker heard now (the leases' clock)
    lost = running(lifecycle, ago=40, worker="dead")
    held = running(lifecycle, ago=20, worker="dead")
    beat(recorder, "alive", [])
    # When the leases are swept
    recovered = leases.recover()
    # Then only the task held longer ago than the lease is queued again, its step sent
    assert [(r.task_id, r.status, r.worker) for r in recovered] == [
        (lost, TaskStatus.RUNNING, "dead")
    ]
    assert [step["task_id"] for step in sent(celery)] == [lost]
    after = row(db, lost)
    assert after.status == TaskStatus.QUEUED.value
    assert (after.held_at, after.inbox) == (None, None)
    assert after.published_at is not None and after.dispatched_at is not None
    assert row(db, held).status == TaskStatus.RUNNING.value
    # And the run the dead worker never finished is shown lost, the other one still open
    assert attempts(db, lost) == [(1, "dead", "lost", "its worker's lease ran out")]
    assert attempts(db, held) == [(1, "dead", None, None)]
    # And a second sweep sends nothing more
    assert leases.recover() == []
    assert sent(celery) == []


def test_a_live_workers_tasks_stay_with_it_until_it_falls_silent(
    db: Database, leases: Leases, lifecycle: Lifecycle, recorder: Recorder, celery: CeleriacCelery
) -> None:
    # Given two tasks started long ago by a live worker, which lists only the first: the
    # second's outcome may be on its way through the broker (behind a control plane that
    # restarted, say), so taking it from a live worker could run it twice
    kept = running(lifecycle, ago=600)
    unlisted = running(lifecycle, ago=600)
    beat(recorder, "w1", [kept])
    # And a heartbeat processed late, older than the one before, which listed both
    beat(recorder, "w1", [kept, unlisted], ago=500)
    # When the leases are swept, then both stay with their worker
    assert leases.recover() == []
    assert {row(db, t).status for t in (kept, unlisted)} == {TaskStatus.RUNNING.value}
    assert sent(celery) == []
    # But once the worker has been silent for longer than the lease (its last heartbeat 40 s
    # ago, another worker heard now), the unlisted task runs again (the listed one's lease,
    # renewed by that last heartbeat, has not run out yet)
    silent_since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=40)
    with db.connect() as conn:
        conn.execute(_workers.update().where(_workers.c.name == "w1"), {"last_seen": silent_since})
    beat(recorder, "w2", [])
    assert [r.task_id for r in leases.recover()] == [unlisted]
    assert [step["task_id"] for step in sent(celery)] == [unlisted]
    assert row(db, kept).status == TaskStatus.RUNNING.value


def test_a_worker_started_again_under_its_name_holds_none_of_its_dead_predecessors_tasks(
    db: Database, leases: Leases, lifecycle: Lifecycle, recorder: Recorder, celery: CeleriacCelery
) -> None:
    # Given a task that w1 started 600 s ago and last listed 200 s ago, when its process died
    old = running(lifecycle, ago=600, worker="w1")
    beat(recorder, "w1", [old], ago=200, started_ago=700)
    # And w1 started again 100 s ago under the same node name (as a supervisor restarts it),
    # whose new process started a task 60 s ago, and beats now listing nothing (that task's
    # outcome may be on its way)
    new = running(lifecycle, ago=60, worker="w1")
    beat(recorder, "w1", [], started_ago=100)
    # When the leases are swept
    recovered = leases.recover()
    # Then the dead process's task is queued and sent again: the live w1 never ran it
    assert [(r.task_id, r.worker) for r in recovered] == [(old, "w1")]
    assert [step["task_id"] for step in sent(celery)] == [old]
    assert row(db, old).status == TaskStatus.QUEUED.value
    # And the task the live process started stays with it
    assert row(db, new).status == TaskStatus.RUNNING.value


def test_a_worker_heard_from_exactly_a_lease_ago_still_holds_its_tasks(
    db: Database, leases: Leases, lifecycle: Lifecycle, recorder: Recorder
) -> None:
    # Given a task started long ago by w1, which lists no task: it is held only while w1 is
    # heard from. w1 was last heard from exactly a lease before the newest heartbeat (w2's),
    # at whole seconds so that the two times are exact
    task_id = running(lifecycle, ago=600)
    newest = float(int(time.time()) - 5)
    beat(recorder, "w1", [], at=newest - LEASE)
    beat(recorder, "w2", [], at=newest)
    # When the leases are swept, then the task stays with w1: a lease runs out after its
    # length, not at it
    assert leases.recover() == []
    assert row(db, task_id).status == TaskStatus.RUNNING.value
    # But one second later by the heartbeats' clock, it runs again
    beat(recorder, "w2", [], at=newest + 1)
    assert [r.task_id for r in leases.recover()] == [task_id]


def test_a_worker_that_lists_no_tasks_renews_every_task_it_started(
    db: Database, leases: Leases, lifecycle: Lifecycle, recorder: Recorder
) -> None:
    # Given tasks started long ago by two workers older than leases (no task list)
    mine = running(lifecycle, ago=600, worker="old")
    theirs = running(lifecycle, ago=600, worker="other")
    # When only the first one's heartbeat is heard
    beat(recorder, "old", None)
    # Then its task is held, and only the other's runs again
    assert [r.task_id for r in leases.recover()] == [theirs]
    assert row(db, mine).status == TaskStatus.RUNNING.value


def test_a_task_held_until_exactly_a_lease_ago_is_not_taken_yet(
    db: Database, leases: Leases, lifecycle: Lifecycle, recorder: Recorder
) -> None:
    # Given a task whose worker, silent ever since, started it exactly a lease before the
    # newest heartbeat (another worker's), at whole seconds so that the times are exact
    newest = float(int(time.time()) - 5)
    task_id = running(lifecycle, ago=0, worker="silent", at=newest - LEASE)
    beat(recorder, "w2", [], at=newest)
    # When the leases are swept, then the task is left alone: its lease runs out after its
    # length, not at it
    assert leases.recover() == []
    assert row(db, task_id).status == TaskStatus.RUNNING.value
    # But one second later by the heartbeats' clock, it runs again
    beat(recorder, "w2", [], at=newest + 1)
    assert [r.task_id for r in leases.recover()] == [task_id]


def test_a_renewal_says_how_many_leases_it_renewed(db: Database, lifecycle: Lifecycle) -> None:
    # Given two tasks that w1 runs, and one it ran that has ended
    first, second, done = (running(lifecycle, ago=60) for _ in range(3))
    with db.connect() as conn:
        conn.execute(_tasks.update().where(_tasks.c.id == done).values(status="succeeded"))
    now = dt.datetime.now(dt.timezone.utc)
    # When w1's heartbeats renew their leases, then each says how many it renewed: none for
    # an empty list, the held ones of a list, and every held one of a worker that lists none
    assert lifecycle.renew("w1", [], now) == 0
    assert lifecycle.renew("w1", [first, second, done], now) == 2
    assert lifecycle.renew("w1", None, now + dt.timedelta(seconds=1)) == 2


def test_a_stopping_worker_that_lists_no_tasks_holds_them_for_one_more_lease(
    db: Database, leases: Leases, lifecycle: Lifecycle, recorder: Recorder
) -> None:
    # Given a task started long ago by a worker older than leases (no task list)
    task_id = running(lifecycle, ago=600, worker="old")
    # When its last heartbeat says that it stops (the outcomes it sent may still be in the
    # broker)
    at = time.time() - LEASE - 10
    recorder.heartbeat(
        Heartbeat(
            worker="old",
            host="h",
            pid=1,
            queues=[],
            deployments=["D"],
            started_at=at - 700,
            at=at,
            gone=True,
            tasks=None,
        )
    )
    # Then the task stays with it for a lease from that heartbeat, though it stopped
    assert leases.recover() == []
    assert row(db, task_id).status == TaskStatus.RUNNING.value
    # And once a lease has passed by the heartbeats' clock, it runs again
    beat(recorder, "w2", [])
    assert [r.task_id for r in leases.recover()] == [task_id]


def test_leases_run_by_the_heartbeats_read_so_a_control_plane_catching_up_takes_nothing(
    db: Database, leases: Leases, lifecycle: Lifecycle, recorder: Recorder
) -> None:
    # Given a task last held 50 s ago, and a control plane that was down: the newest
    # heartbeat it has read so far was sent 40 s ago (the rest wait in the broker)
    task_id = running(lifecycle, ago=50)
    beat(recorder, "w2", [], ago=40)
    # When the leases are swept, then nothing is taken: by the heartbeats' clock the lease
    # has 20 s to go
    assert leases.recover() == []
    assert row(db, task_id).status == TaskStatus.RUNNING.value
    # But once a heartbeat of now is read (its worker w1 silent since), the task runs again
    beat(recorder, "w2", [])
    assert [r.task_id for r in leases.recover()] == [task_id]
    # And with no heartbeat recorded at all, there is no clock, and nothing is taken
    with db.connect() as conn:
        conn.exec_driver_sql("DELETE FROM workers")
    other = running(lifecycle, ago=600)
    assert leases.recover() == []
    assert row(db, other).status == TaskStatus.RUNNING.value


def test_silence_while_heartbeats_could_not_be_recorded_takes_no_task_for_a_whole_lease(
    db: Database, leases: Leases, lifecycle: Lifecycle, recorder: Recorder, celery: CeleriacCelery
) -> None:
    # Given a task of w1, whose heartbeats of the last 40 s failed with the database and
    # wait for their retries, while another worker's heartbeat of now is recorded first
    task_id = running(lifecycle, ago=600)
    beat(recorder, "w1", [task_id], ago=40)
    leases.missed()  # what a heartbeat that the database failed does
    beat(recorder, "w2", [])
    # When the leases are swept, then w1 keeps its task: its silence is the database's
    assert leases.recover() == []
    assert row(db, task_id).status == TaskStatus.RUNNING.value
    assert sent(celery) == []
    # And a whole lease after the last failure, a worker still unheard loses its task
    later = Leases(lifecycle, Dispatcher(celery), heartbeat_interval=INTERVAL)
    later.missed(dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=LEASE + 1))
    assert [r.task_id for r in later.recover()] == [task_id]
    # While a failure less than a lease ago still holds it
    held = running(lifecycle, ago=600)
    later.missed(dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=LEASE - 5))
    assert later.recover() == []
    assert row(db, held).status == TaskStatus.RUNNING.value


def test_a_sweep_the_database_failed_holds_every_lease_too(
    tmp_path: Path, celery: CeleriacCelery
) -> None:
    # Given a task whose worker went silent long ago, and another worker heard now
    folder = tmp_path / "db"
    url = f"sqlite:///{folder / 'leases.db'}"
    folder.mkdir()
    migrations.upgrade(url)
    database = Database(url)
    with database.begin() as session:
        session.add(Deployment(id=1, name="D", spec={}, source_yaml="", base_path=""))
    lifecycle = Lifecycle(database)
    dispatcher = Dispatcher(celery)
    outbox = Outbox(lifecycle, dispatcher, redispatch_after=30.0)
    recorder = Recorder(database, lifecycle, TaskWaiter(), dispatcher, outbox)
    task_id = running(lifecycle, ago=600)
    beat(recorder, "w2", [])
    leases = Leases(lifecycle, dispatcher, heartbeat_interval=INTERVAL)
    try:
        # When the database goes away and a sweep fails on it
        database.dispose()
        folder.rename(tmp_path / "away")
        with pytest.raises(OperationalError):
            leases.recover()
        # Then, the database back, that control plane takes no task until a lease has passed
        (tmp_path / "away").rename(folder)
        assert leases.recover() == []
        assert row(database, task_id).status == TaskStatus.RUNNING.value
        # While one that saw no failure takes it
        fresh = Leases(lifecycle, dispatcher, heartbeat_interval=INTERVAL)
        assert [r.task_id for r in fresh.recover()] == [task_id]
    finally:
        outbox.close()
        database.dispose()


def test_a_step_the_broker_refuses_leaves_the_task_for_the_next_sweep(
    db: Database, lifecycle: Lifecycle, recorder: Recorder
) -> None:
    # Given a task whose lease ran out, its worker silent
    task_id = running(lifecycle, ago=600)
    beat(recorder, "w2", [])
    # When the broker refuses its step, then it is left as it was
    assert lifecycle.recover(dt.timedelta(seconds=LEASE), lambda _step: False) == []
    assert row(db, task_id).status == TaskStatus.RUNNING.value
    # And the next sweep, with a broker that takes it, recovers it
    taken = []
    recovered = lifecycle.recover(dt.timedelta(seconds=LEASE), lambda s: taken.append(s) or True)
    assert [r.task_id for r in recovered] == [task_id]
    assert [s.task_id for s in taken] == [task_id]


@pytest.mark.parametrize("first", ["late outcome of the lost run", "outcome of the new run"])
def test_whichever_run_ends_first_is_recorded_once_and_the_other_changes_nothing(
    db: Database, leases: Leases, lifecycle: Lifecycle, recorder: Recorder, first: str
) -> None:
    # Given a task recovered from a worker taken for dead (cut off from the network)
    task_id = running(lifecycle, ago=600, worker="cut-off")
    beat(recorder, "w2", [])
    assert [r.task_id for r in leases.recover()] == [task_id]
    # When the new run on w2 starts, and both runs end in either order
    lifecycle.start(StepStarted(task_id=task_id, worker="w2", at=time.time(), inbox="in-w2"))
    old, new = outcome(task_id, "old", "cut-off"), outcome(task_id, "new", "w2")
    ends = [old, new] if first.startswith("late") else [new, old]
    stored = [lifecycle.finish(end).status for end in ends]
    # Then the first outcome is recorded, once; the second changes nothing
    assert stored == [TaskStatus.SUCCEEDED, None]
    after = row(db, task_id)
    assert (after.status, after.result) == (TaskStatus.SUCCEEDED.value, ends[0].result)
    # And a start report of either run arriving late leaves it ended, and out of the sweep
    lifecycle.start(StepStarted(task_id=task_id, worker="cut-off", at=time.time() - 900))
    assert row(db, task_id).status == TaskStatus.SUCCEEDED.value
    assert leases.recover() == []
    with db.peek() as conn:
        stops = conn.exec_driver_sql(
            "SELECT count(*) FROM events WHERE task_id = ?", (task_id,)
        ).scalar()
    assert stops == 1


def test_a_task_recovered_while_it_waited_for_input_gets_its_answers_on_the_next_start(
    db: Database, leases: Leases, lifecycle: Lifecycle, recorder: Recorder
) -> None:
    # Given a task that asked for input, was answered, and whose worker then died
    task_id = running(lifecycle, ago=600)
    question = {"type": "InputRequiredEvent", "qualified_name": "x.I", "input_required": True}
    lifecycle.record_event(StepEvent(task_id=task_id, seq=0, event=question, at=time.time()))
    assert row(db, task_id).status == TaskStatus.WAITING_INPUT.value
    beat(recorder, "w2", [])
    # When its lease is swept
    [recovered] = leases.recover()
    # Then it is queued again from waiting_input, and an answer sent now names no inbox
    assert recovered.status is TaskStatus.WAITING_INPUT
    answer = {"qualified_name": "x.HumanResponseEvent", "response": "yes"}
    assert lifecycle.resume(task_id, answer) == (0, None, None)
    # And the worker that starts it next gets the answer
    again = StepStarted(task_id=task_id, worker="w2", at=time.time(), inbox="in-w2")
    assert [seq for seq, _data in lifecycle.start(again)] == [0]
    assert row(db, task_id).status == TaskStatus.RUNNING.value


def test_a_recovered_task_of_a_session_keeps_its_turn_and_runs_in_its_context(
    db: Database, leases: Leases, lifecycle: Lifecycle, recorder: Recorder, celery: CeleriacCelery
) -> None:
    # Given a session with a stored Context, whose running task's worker died
    with db.begin() as session:
        session.add(Session(id="s1", deployment_id=1, state={"count": 2}))
    task_id = running(lifecycle, ago=600, session="s1")
    beat(recorder, "w2", [])
    # When its lease is swept
    assert [r.task_id for r in leases.recover()] == [task_id]
    # Then its step carries the session's Context and asks for it back
    [step] = sent(celery)
    assert (step["task_id"], step["session_id"]) == (task_id, "s1")
    assert (step["context"], step["keep_context"]) == ({"count": 2}, True)
    # And the session is still its own
    with db.peek() as conn:
        active = conn.exec_driver_sql("SELECT active_task_id FROM sessions").scalar()
    assert active == task_id


@pytest.mark.parametrize("status", [TaskStatus.QUEUED, TaskStatus.SUCCEEDED, TaskStatus.FAILED])
def test_a_task_no_worker_holds_by_its_status_is_never_recovered(
    db: Database, leases: Leases, lifecycle: Lifecycle, recorder: Recorder, status: TaskStatus
) -> None:
    # Given a task started long ago, since queued again or ended
    task_id = running(lifecycle, ago=600)
    with db.connect() as conn:
        conn.execute(_tasks.update().where(_tasks.c.id == task_id).values(status=status.value))
    beat(recorder, "w1", [])
    # When the leases are swept, then it is left as it is
    assert leases.recover() == []
    assert row(db, task_id).status == status.value


def test_the_documented_bound_counts_the_lease_the_clock_and_one_sweep(
    leases: Leases, lifecycle: Lifecycle, celery: CeleriacCelery
) -> None:
    # With the defaults (heartbeats every 10 s, sends again after 30 s): 50 s, as documented
    outbox = Outbox(lifecycle, Dispatcher(celery), redispatch_after=30.0)
    period = sweep_period(outbox, leases)
    assert (period, leases.bound(period)) == (INTERVAL, 50.0)
    assert leases.lease == dt.timedelta(seconds=LEASE)
