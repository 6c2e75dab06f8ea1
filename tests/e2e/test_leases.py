"""End to end on Redis and PostgreSQL: a task whose worker stops holding it (killed, or frozen
as if cut off from the network) is queued and sent again by the control plane within the
documented bound, and recorded once, however many times it ran."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    HEARTBEAT_INTERVAL,
    REDISPATCH_AFTER,
    Platform,
    admin_connection,
    node,
)
from tests.support.processes import poll

#: The documented bound (``Leases.bound``): a three-beat lease, one beat for the clock, one
#: sweep (a third of ``redispatch_after``, at most a beat).
BOUND = 4 * HEARTBEAT_INTERVAL + min(REDISPATCH_AFTER / 3, HEARTBEAT_INTERVAL)
#: What the processes may add to it on this shared 2-core machine (heartbeats through Redis).
SLACK = 2.0
#: How long the task sleeps: well past the bound, so the killed run cannot have ended.
NAP = 8.0


@pytest.fixture
def platform(redis_url: str, make_platform: Callable[[str], Platform]) -> Platform:
    """A distributed platform on Redis and PostgreSQL (nothing started yet)."""
    return make_platform(redis_url)


def started_on_first_worker(
    platform: Platform, deployment: Path, runs: Path
) -> tuple[Any, Any, str]:
    """The platform with one worker ``w1`` running a long task, and a second worker ``w2``
    idle; the two workers' processes and the task's id."""
    platform.serve(deployment)
    platform.control_plane()
    platform.wait_for_consumer(node("control-plane"))
    first = platform.service_worker("w1", deployment="Counted", service="work", concurrency=1)
    platform.wait_for_workers("Counted", {node("w1")})
    [task_id] = platform.submit("Counted", [{"log": str(runs), "seconds": NAP, "n": 0}])
    poll(
        lambda: platform.tasks("Counted")[task_id],
        lambda t: t["status"] == "running",
        30.0,
        "the task running on w1",
    )
    assert platform.workers_by_task([task_id]) == {node("w1"): 1}
    second = platform.service_worker("w2", deployment="Counted", service="work", concurrency=1)
    platform.wait_for_workers("Counted", {node("w1"), node("w2")})
    return first, second, task_id


def recovered_within_bound(platform: Platform, task_id: str, since: float) -> float:
    """Wait for the task to run on ``w2``; the seconds from ``since`` (a ``time.time()``) to
    its recovery (when the control plane sent it again), checked against the bound."""
    poll(
        lambda: platform.query("SELECT worker FROM tasks WHERE id = %s", (task_id,))[0][0],
        lambda worker: worker == node("w2"),
        BOUND + SLACK + 10.0,
        "the task started again on w2",
    )
    [(dispatched,)] = platform.query("SELECT dispatched_at FROM tasks WHERE id = %s", (task_id,))
    elapsed: float = dispatched.timestamp() - since
    assert 0 < elapsed <= BOUND + SLACK, f"recovered after {elapsed:.1f} s, bound {BOUND:g} s"
    return elapsed


@pytest.mark.e2e
def test_a_task_whose_worker_is_killed_runs_again_within_the_bound_and_is_recorded_once(
    platform: Platform, counted: Path, tmp_path: Path
) -> None:
    """SIGKILL of the worker mid-run: the lease (5 s here) runs out before Redis puts the dead
    worker's step back (12 s, once its owner key expired), which may run it once more."""
    # Given a long task running on w1, and an idle worker w2
    runs = tmp_path / "runs.txt"
    first, _second, task_id = started_on_first_worker(platform, counted, runs)

    # When w1 is killed without a chance to say goodbye
    killed_at = time.time()
    first.kill()

    # Then the control plane sends the task again within the bound, and w2 runs it
    recovered_within_bound(platform, task_id, killed_at)
    # And it ends once, on w2, after w1's run, the lease's, and at most the broker's put-back
    [task] = platform.wait_for_tasks("Counted", [task_id], timeout=NAP + 30.0).values()
    assert (task["status"], task["result"]) == ("succeeded", "done 0")
    assert task["attempts"] in (2, 3)
    assert platform.workers_by_task([task_id]) == {node("w2"): 1}
    assert platform.stop_events([task_id]) == {task_id: 1}
    pids = [int(line.split()[2]) for line in runs.read_text().splitlines()]
    assert 2 <= len(pids) <= 3 and pids[0] == first.pid and first.pid not in pids[1:], pids


def sent_again_within_bound(platform: Platform, task_id: str, since: float) -> float:
    """Wait until the control plane sent the task again after ``since`` (a ``time.time()``),
    to whichever worker; the seconds it took, checked against the bound."""

    def dispatched() -> float:
        [(at,)] = platform.query("SELECT dispatched_at FROM tasks WHERE id = %s", (task_id,))
        stamp: float = at.timestamp()
        return stamp

    elapsed = poll(dispatched, lambda at: at > since, BOUND + SLACK + 10.0, "sent again") - since
    assert elapsed <= BOUND + SLACK, f"recovered after {elapsed:.1f} s, bound {BOUND:g} s"
    return elapsed


@pytest.mark.e2e
def test_a_killed_worker_started_again_under_its_name_gives_up_its_old_task_within_the_bound(
    platform: Platform, counted: Path, tmp_path: Path
) -> None:
    """SIGKILL of the worker mid-run, then the same command started again at once, as a
    supervisor does: the new process's heartbeats, under the same node name, do not hold the
    task the dead process ran (the lease, 5 s here, runs out before Redis puts the dead
    process's step back, 12 s, which may run it once more)."""
    # Given a long task running on w1, and an idle worker w2
    runs = tmp_path / "runs.txt"
    first, _second, task_id = started_on_first_worker(platform, counted, runs)

    # When w1 is killed, and started again at once under its own node name
    killed_at = time.time()
    first.kill()
    again = platform.service_worker("w1", deployment="Counted", service="work", concurrency=1)

    # Then the control plane sends the task again within the bound
    sent_again_within_bound(platform, task_id, killed_at)
    # And it ends once, the later runs on live workers
    [task] = platform.wait_for_tasks("Counted", [task_id], timeout=NAP + 30.0).values()
    assert (task["status"], task["result"]) == ("succeeded", "done 0")
    assert task["attempts"] in (2, 3)
    assert platform.stop_events([task_id]) == {task_id: 1}
    pids = [int(line.split()[2]) for line in runs.read_text().splitlines()]
    assert 2 <= len(pids) <= 3 and pids[0] == first.pid and first.pid not in pids[1:], pids
    assert again.alive()


@pytest.mark.e2e
def test_a_worker_cut_off_then_back_has_its_late_outcome_recorded_once(
    platform: Platform, counted: Path, tmp_path: Path
) -> None:
    """SIGSTOP of the worker mid-run (silent, as if cut off), then SIGCONT: both runs end."""
    # Given a long task running on w1, and an idle worker w2
    runs = tmp_path / "runs.txt"
    first, _second, task_id = started_on_first_worker(platform, counted, runs)

    # When w1 freezes: no heartbeat, no report, but it still holds its message
    stopped_at = time.time()
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        # Then the control plane takes the task from it within the bound, and w2 runs it
        recovered_within_bound(platform, task_id, stopped_at)
        poll(lambda: len(runs.read_text().splitlines()), lambda n: n == 2, 10.0, "second run")
    finally:
        # When w1 comes back, its run ends (its sleep is over) and reports its outcome
        os.killpg(first.pid, signal.SIGCONT)

    # Then the task ends once: the first outcome to arrive is kept, the other changes nothing
    [task] = platform.wait_for_tasks("Counted", [task_id], timeout=NAP + 30.0).values()
    assert (task["status"], task["result"]) == ("succeeded", "done 0")
    assert platform.stop_events([task_id]) == {task_id: 1}
    # And w2's run ends too, with nothing more recorded: still one outcome, one StopEvent
    time.sleep(NAP)
    again = platform.tasks("Counted")[task_id]
    assert (again["status"], again["finished_at"]) == ("succeeded", task["finished_at"])
    assert platform.stop_events([task_id]) == {task_id: 1}
    # And both workers are alive and ran it, once each
    assert first.alive()
    assert len({line.split()[2] for line in runs.read_text().splitlines()}) == 2


@pytest.mark.e2e
def test_a_tasks_run_answered_503_after_its_task_was_sent_names_it_and_it_runs_once(
    platform: Platform, counted: Path, tmp_path: Path
) -> None:
    """The database goes away while tasks/run waits for a task already in the broker."""
    # Given an API server and its control plane, and no service worker yet
    platform.serve(counted)
    platform.control_plane()
    platform.wait_for_consumer(node("control-plane"))
    runs = tmp_path / "runs.txt"
    # When a client runs a task, and the database refuses every connection once the task
    # is in the broker
    answers: list[httpx.Response] = []
    body = {"input": json.dumps({"log": str(runs), "seconds": 0, "n": 0})}
    client = threading.Thread(
        target=lambda: answers.append(
            platform.http.post("/deployments/Counted/tasks/run", json=body, params={"timeout": 60})
        )
    )
    client.start()
    [(task_id,)] = poll(
        lambda: platform.query("SELECT id FROM tasks WHERE published_at IS NOT NULL"),
        lambda rows: len(rows) == 1,
        30.0,
        "the task noted as published",
    )
    database = platform.database_url.rsplit("/", 1)[1]
    with admin_connection() as admin:
        admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (database,),
        )
    try:
        client.join(timeout=30.0)
        assert not client.is_alive(), "tasks/run still waiting 30 s after the outage"
    finally:
        with admin_connection() as admin:
            admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
    # Then the answer is 503 with Retry-After, naming the task and saying it was sent
    [answer] = answers
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["Retry-After"]) > 0
    assert answer.json()["errors"] == {"task_id": task_id, "published": True}
    # And once the database is back (the API's first reads find its connections dead, and
    # answer 503 too) and a worker serves the deployment, the task runs once and succeeds:
    # the client need not (and must not) send it again
    poll(
        lambda: platform.http.get("/deployments/Counted/tasks").status_code,
        lambda code: code == 200,
        30.0,
        "the API reading the database again",
    )
    platform.service_worker("w1", deployment="Counted", service="work", concurrency=1)
    [task] = platform.wait_for_tasks("Counted", [task_id]).values()
    assert (task["status"], task["result"], task["attempts"]) == ("succeeded", "done 0", 1)
    assert len(runs.read_text().splitlines()) == 1
