"""End to end on Redis and RabbitMQ, with PostgreSQL: task control across real processes.

A cancel of a queued, a running and a waiting task, and one that survives a restart of the
API server and the control-plane consumer; retries by policy with their backoff measured on
the worker; a time limit that frees the worker's slot; a task that expires in the queue with
no worker to take it. The workflows are the embedded tests' (``tests/app/workflows/
controlled``): they note in a trace file when a run starts, ends, or is cancelled.

To keep the module quick, one API server and one control-plane consumer per broker serve it,
with the ``Controlled`` deployment and one service worker of one slot for the tests that need
a worker from the start; a test that needs no worker until later deploys a copy of its own.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from amqp.exceptions import ChannelError
from kombu import Connection

from tests.app.conftest import WORKFLOWS
from tests.e2e.conftest import (
    TERMINAL,
    Platform,
    free_redis_database,
    fresh_postgres_database,
    node,
    private_vhost,
)
from tests.support.processes import Process, Processes, poll

CONTROLLED = WORKFLOWS / "controlled"
#: Bound on any one wait of a test; only a failing test waits this long.
DEADLINE = 30.0
#: Words left out of the deployment name made of a test's name.
ARTICLES = {"a", "an", "the"}

pytestmark = pytest.mark.e2e


# -- one API server and control-plane consumer per broker ---------------------------------------


@pytest.fixture(scope="module", params=["redis", "amqp"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Platform, Processes]]:
    """The API server and the control-plane consumer, on a broker of their own and a fresh
    PostgreSQL database."""
    broker = free_redis_database() if request.param == "redis" else private_vhost()
    with broker as broker_url, fresh_postgres_database("celeriac_e2e_control") as database_url:
        workdir = tmp_path_factory.mktemp(f"control-{request.param}")
        started = Processes(workdir / "logs")
        platform = Platform(broker_url, database_url, workdir, started)
        try:
            # (one after the other: each migrates the empty database as it starts)
            platform.serve()
            platform.control_plane()
            platform.wait_for_consumer(node("control-plane"))
            yield platform, started
        finally:
            started.kill_all()
            platform.close()


@pytest.fixture
def processes(cluster: tuple[Platform, Processes]) -> Processes:
    """The module's processes, under the name whose logs a failing test shows (conftest)."""
    return cluster[1]


@pytest.fixture
def platform(cluster: tuple[Platform, Processes], processes: Processes) -> Platform:
    """The module's platform."""
    return cluster[0]


def deploy(platform: Platform, name: str) -> None:
    """Deploy a copy of the ``Controlled`` deployment under ``name``."""
    folder = platform.workdir / name
    shutil.copytree(CONTROLLED, folder)
    path = folder / "deployment.yml"
    path.write_text(path.read_text().replace("name: Controlled", f"name: {name}", 1))
    response = platform.http.post(
        "/deployments/create",
        params={"base_path": str(folder)},
        files={"config_file": (path.name, path.read_bytes())},
    )
    assert response.status_code == 200, response.text


def start_worker(platform: Platform, deployment: str) -> Process:
    """Start a service worker of ``deployment``, of one slot, and wait until it is live."""
    name = f"{deployment.lower()}-w"
    worker = platform.service_worker(name, deployment=deployment, concurrency=1)
    platform.wait_for_workers(deployment, {node(name)}, timeout=DEADLINE)
    return worker


@pytest.fixture(scope="module")
def served(cluster: tuple[Platform, Processes]) -> tuple[str, Process]:
    """The ``Controlled`` deployment and its service worker of one slot, for the tests that
    need a worker from the start (a worker takes seconds to start)."""
    platform = cluster[0]
    deploy(platform, "Controlled")
    return "Controlled", start_worker(platform, "Controlled")


@pytest.fixture
def controlled(platform: Platform, served: tuple[str, Process]) -> Iterator[str]:
    """The served deployment's name; what a test leaves unfinished is cancelled after it, so
    the worker's slot is free for the next."""
    deployment, worker = served
    assert worker.alive(), worker.output()
    yield deployment
    for task_id, found in platform.tasks(deployment).items():
        if found["status"] not in TERMINAL:
            platform.http.post(f"/deployments/{deployment}/tasks/{task_id}/cancel")


@pytest.fixture
def later_worker(platform: Platform, request: pytest.FixtureRequest) -> Iterator[LaterWorker]:
    """A deployment of this test's own (a copy of ``Controlled`` under a name made of the
    test's), with no worker until the test starts one; it is killed when the test ends."""
    words = [w for w in request.node.name.split("[")[0].split("_")[1:] if w not in ARTICLES]
    later = LaterWorker(platform, "".join(word.title() for word in words[:3]))
    deploy(platform, later.deployment)
    try:
        yield later
    finally:
        if later.worker is not None:
            later.worker.kill()


class LaterWorker:
    """A deployment whose service worker a test starts when it wants it."""

    def __init__(self, platform: Platform, deployment: str) -> None:
        self.platform = platform
        self.deployment = deployment
        self.worker: Process | None = None

    def start(self) -> Process:
        """Start the deployment's worker (of one slot) and wait until it is live."""
        self.worker = start_worker(self.platform, self.deployment)
        return self.worker


# -- helpers ----------------------------------------------------------------------------------


def ok(response: httpx.Response) -> Any:
    """The JSON body of a 200 response."""
    assert response.status_code == 200, response.text
    return response.json()


def create(
    platform: Platform,
    deployment: str,
    service: str,
    *,
    session: str | None = None,
    controls: dict[str, float] | None = None,
    **run_input: Any,
) -> str:
    """Queue a task of ``service`` with ``run_input`` (and task ``controls``); its id."""
    params = {} if session is None else {"session_id": session}
    body = {"service_id": service, "input": run_input, **(controls or {})}
    created = platform.http.post(
        f"/deployments/{deployment}/tasks/create", params=params, json=body
    )
    return str(ok(created)["task_id"])


def task(platform: Platform, deployment: str, task_id: str) -> dict[str, Any]:
    found: dict[str, Any] = ok(platform.http.get(f"/deployments/{deployment}/tasks/{task_id}"))
    return found


def status_is(platform: Platform, deployment: str, task_id: str, *statuses: str) -> dict[str, Any]:
    """Wait until the task is in one of ``statuses``; the task."""
    found: dict[str, Any] = poll(
        lambda: task(platform, deployment, task_id),
        lambda t: t["status"] in statuses,
        DEADLINE,
        f"task {task_id} {' or '.join(statuses)}",
    )
    return found


def cancel(platform: Platform, deployment: str, task_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = ok(
        platform.http.post(f"/deployments/{deployment}/tasks/{task_id}/cancel")
    )
    return answer


def trace(path: Path) -> list[tuple[str, float]]:
    """What a run of the controlled workflows noted in its trace file: (what, when) pairs."""
    words = path.read_text().split() if path.exists() else []
    return [(words[n], float(words[n + 1])) for n in range(0, len(words), 2)]


def queued_in_broker(platform: Platform, queue: str) -> int:
    """Messages ready in a queue of the broker (those a worker holds unacknowledged are not)."""
    with Connection(platform.broker_url, connect_timeout=5) as conn:
        try:
            return int(conn.channel().queue_declare(queue, passive=True).message_count)
        except ChannelError:
            if platform.broker_url.startswith("redis://"):
                return 0  # a Redis queue is a list, there only while it holds messages
            raise


def seconds(text: str) -> float:
    """A timestamp of the API as seconds since the epoch."""
    return dt.datetime.fromisoformat(text).timestamp()


# -- cancel -----------------------------------------------------------------------------------


def test_a_cancelled_queued_task_never_starts_and_a_cancelled_run_frees_its_slot(
    platform: Platform, controlled: str, tmp_path: Path
) -> None:
    deployment = controlled
    # Given a worker of one slot running a long nap, and a task whose step waits behind it
    queue = f"celeriac.{deployment}.nap"
    running = create(platform, deployment, "nap", seconds=60, trace=str(tmp_path / "running"))
    status_is(platform, deployment, running, "running")
    queued = create(platform, deployment, "nap", seconds=0, trace=str(tmp_path / "queued"))
    poll(lambda: queued_in_broker(platform, queue), lambda n: n == 1, DEADLINE, "a step queued")
    # When the queued task is cancelled
    assert cancel(platform, deployment, queued)["status"] == "cancelled"
    assert task(platform, deployment, queued)["error"]["type"] == "celeriac.Cancelled"
    # And then the running one
    asked = time.time()
    assert cancel(platform, deployment, running)["status"] == "cancelled"
    # Then the run was stopped politely (its workflow noted the CancelledError) and recorded so
    poll(
        lambda: [what for what, _ in trace(tmp_path / "running")],
        lambda noted: "cancelled" in noted,
        DEADLINE,
        "the running nap noting its cancel",
    )
    run = poll(
        lambda: task(platform, deployment, running)["attempt_history"],
        lambda runs: runs and runs[-1]["outcome"] == "cancelled",
        DEADLINE,
        "the run's outcome recorded",
    )[-1]
    assert run["error"]["type"] == "celeriac.Cancelled"
    # And the slot is free: the worker takes the cancelled step, drops it, and runs the next
    later = create(platform, deployment, "nap", seconds=0, trace=str(tmp_path / "later"))
    assert status_is(platform, deployment, later, "succeeded")["result"] == "slept 0s"
    [(_, began)] = [note for note in trace(tmp_path / "later") if note[0] == "start"]
    print(f"cancel: the next task began {began - asked:.3f} s after the running one's cancel")
    assert began - asked < 3.0, began - asked
    assert queued_in_broker(platform, queue) == 0
    assert trace(tmp_path / "queued") == []
    after = task(platform, deployment, queued)
    assert (after["status"], after["attempts"], after["attempt_history"]) == ("cancelled", 0, [])


def test_a_cancelled_waiting_task_ends_frees_its_slot_and_its_session_moves_on(
    platform: Platform, controlled: str, tmp_path: Path
) -> None:
    deployment = controlled
    # Given a worker of one slot, whose run waits for a person, and the session's next task
    tasks = f"/deployments/{deployment}/tasks"
    session = ok(platform.http.post(f"/deployments/{deployment}/sessions/create"))["session_id"]
    first = create(
        platform, deployment, "nap", session=session, ask=True, trace=str(tmp_path / "1")
    )
    status_is(platform, deployment, first, "waiting_input")
    second = create(platform, deployment, "nap", session=session, trace=str(tmp_path / "2"))
    assert task(platform, deployment, second)["status"] == "queued"
    # When the waiting task is cancelled
    assert cancel(platform, deployment, first)["status"] == "cancelled"
    # Then its run is recorded cancelled, and the next task runs on the freed slot
    run = poll(
        lambda: task(platform, deployment, first)["attempt_history"],
        lambda runs: runs and runs[-1]["outcome"] == "cancelled",
        DEADLINE,
        "the waiting run's outcome recorded",
    )[-1]
    assert run["error"]["type"] == "celeriac.Cancelled"
    assert status_is(platform, deployment, second, "succeeded")["result"] == "slept 0s"
    # (its step returned when it asked: no step was running to get a CancelledError)
    assert [what for what, _ in trace(tmp_path / "1")] == ["start"]
    # And an answer sent now is refused: the task has ended
    answer = {
        "event_obj_str": json.dumps(
            {
                "__is_pydantic": True,
                "value": {"response": "y"},
                "qualified_name": "HumanResponseEvent",
            }
        )
    }
    assert platform.http.post(f"{tasks}/{first}/events", json=answer).status_code == 409
    assert task(platform, deployment, first)["status"] == "cancelled"


def test_a_cancel_survives_a_restart_of_every_process(
    platform: Platform, processes: Processes, later_worker: LaterWorker, tmp_path: Path
) -> None:
    deployment = later_worker.deployment
    # Given a task whose step waits in the broker, no service worker being up
    queue = f"celeriac.{deployment}.nap"
    queued = create(platform, deployment, "nap", seconds=0, trace=str(tmp_path / "queued"))
    poll(lambda: queued_in_broker(platform, queue), lambda n: n == 1, DEADLINE, "a step queued")
    # When it is cancelled (a broadcast that no worker of its deployment hears)
    assert cancel(platform, deployment, queued)["status"] == "cancelled"
    # And the API server and the control-plane consumer stop, then start again
    for process in processes.started:
        if process.name in {"api", "control-plane"} and process.alive():
            assert process.terminate() == 0, process.output()
    platform.control_plane()  # (starting while the API server does: the database is migrated)
    platform.serve()
    platform.wait_for_consumer(node("control-plane"))
    # And only then a service worker of its deployment starts
    later_worker.start()
    # Then it takes the step and drops it: the task stays cancelled, never run
    poll(lambda: queued_in_broker(platform, queue), lambda n: n == 0, DEADLINE, "the step taken")
    later = create(platform, deployment, "nap", seconds=0, trace=str(tmp_path / "later"))
    assert status_is(platform, deployment, later, "succeeded")["result"] == "slept 0s"
    assert trace(tmp_path / "queued") == []
    after = task(platform, deployment, queued)
    assert (after["status"], after["attempts"], after["attempt_history"]) == ("cancelled", 0, [])


# -- retries by policy ------------------------------------------------------------------------


def test_a_failing_run_is_retried_by_policy_on_a_worker_with_its_backoff(
    platform: Platform, controlled: str, tmp_path: Path
) -> None:
    deployment = controlled
    # Given a task of the retried service (3 attempts, backoff 0.4 s doubling, no jitter) that
    # fails twice with ConnectionError
    runs = tmp_path / "runs"
    task_id = create(platform, deployment, "retried", fail=2, trace=str(runs))
    # Then it succeeds on its third run, on the worker, each run recorded
    ended = status_is(platform, deployment, task_id, "succeeded", "failed")
    assert (ended["status"], ended["result"], ended["run"]) == (
        "succeeded",
        "succeeded on run 3",
        3,
    )
    history = ended["attempt_history"]
    assert [r["outcome"] for r in history] == ["failed", "failed", "succeeded"]
    assert {r["worker"] for r in history} == {node(f"{deployment.lower()}-w")}
    assert [r["error"]["message"] for r in history[:2]] == ["run 1 fails", "run 2 fails"]
    # And the runs began after the backoff, measured by the worker's clock: 0.4 s, then 0.8 s,
    # plus the way of the failure to the control plane (the backoff counts from its record)
    # and of the retry back to the worker: 0.02 to 0.14 s here, on either broker. The bound
    # allows 2.5 times that, and stays under 0.4 s: a gap of the wrong backoff step fails.
    starts = [when for what, when in trace(runs) if what == "start"]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    print(f"retry gaps {gaps}")
    assert 0.4 <= gaps[0] < 0.4 + 0.35, gaps
    assert 0.8 <= gaps[1] < 0.8 + 0.35, gaps


# -- time limits and queue expiry -------------------------------------------------------------


def test_a_run_past_its_time_limit_times_out_and_frees_the_workers_slot(
    platform: Platform, controlled: str, tmp_path: Path
) -> None:
    deployment = controlled
    # Given a worker of one slot running a task of the limited service (time-limit 1 s) that
    # naps a minute, and a second task queued behind it
    slow = create(platform, deployment, "limited", seconds=60, trace=str(tmp_path / "slow"))
    status_is(platform, deployment, slow, "running")
    quick = create(platform, deployment, "limited", seconds=0, trace=str(tmp_path / "quick"))
    # Then the first ends timed_out about a second in, stopped politely
    ended = status_is(platform, deployment, slow, "timed_out", "succeeded", "failed", "cancelled")
    assert ended["status"] == "timed_out"
    assert ended["error"]["type"] == "celeriac.TimeLimitExceeded"
    assert "time-limit of 1 s" in ended["error"]["message"]
    assert ended["attempt_history"][-1]["outcome"] == "timed_out"
    # (the limit counts from the run's start on the worker, a little before its step's)
    began = seconds(ended["attempt_history"][-1]["started_at"])
    stopped_after = dict(trace(tmp_path / "slow"))["cancelled"] - began
    # And the second runs on the freed slot and succeeds within a couple of seconds
    assert status_is(platform, deployment, quick, "succeeded")["result"] == "slept 0s"
    quick_after = dict(trace(tmp_path / "quick"))["end"] - began
    print(f"time limit: stopped {stopped_after:.3f} s in, next ran {quick_after:.3f} s in")
    assert 1.0 <= stopped_after < 1.5, stopped_after
    assert quick_after < 3.0, quick_after


def test_a_task_no_worker_takes_expires_in_the_queue_and_a_later_worker_drops_it(
    platform: Platform, later_worker: LaterWorker, tmp_path: Path
) -> None:
    deployment = later_worker.deployment
    # Given a task allowed to wait one second in the queue, and no service worker
    queue = f"celeriac.{deployment}.nap"
    sent = time.time()
    late = create(
        platform,
        deployment,
        "nap",
        controls={"queue_timeout": 1},
        seconds=0,
        trace=str(tmp_path / "late"),
    )
    # Then the control plane's sweep (every second) ends it timed_out within about two
    # seconds of its creation, not started
    ended = status_is(platform, deployment, late, "timed_out", "succeeded", "failed", "cancelled")
    seen = time.time() - sent
    assert (ended["status"], ended["error"]["type"]) == ("timed_out", "celeriac.QueueTimeout")
    assert (ended["started_at"], ended["attempts"]) == (None, 0)
    expired = seconds(ended["finished_at"]) - seconds(ended["created_at"])
    print(f"queue timeout: ended {expired:.3f} s after its creation, seen {seen:.3f} s after")
    assert 1.0 <= expired < 2.25, expired
    assert seen < 3.0, seen
    assert queued_in_broker(platform, queue) == 1
    # When a worker starts later, it takes the step and drops it
    later_worker.start()
    poll(lambda: queued_in_broker(platform, queue), lambda n: n == 0, DEADLINE, "the step taken")
    later = create(platform, deployment, "nap", seconds=0, trace=str(tmp_path / "later"))
    assert status_is(platform, deployment, later, "succeeded")["result"] == "slept 0s"
    assert trace(tmp_path / "late") == []
    after = task(platform, deployment, late)
    assert (after["status"], after["attempts"], after["attempt_history"]) == ("timed_out", 0, [])
