"""End to end on Redis and RabbitMQ, with PostgreSQL: durable services across real processes.

A durable run whose worker is killed mid-step resumes on another worker from its journal,
running again only the step in flight; runs that wait for input are parked (no worker thread
holds them), resumed by the answer whichever processes stopped, started again or reloaded the
deployment meanwhile; a control plane killed mid-run loses nothing of the journal. The
workflows are the embedded tests' (``tests/app/workflows/durable``): each step notes its
execution in a file, and step ``three`` waits while ``<log>.hold`` exists.

To keep the module quick, one platform per broker serves it: the API server, the
control-plane consumer and two service workers of two threads each, which let a waiting run
go after a second. A test that kills or stops processes starts them again before it ends.

Not covered here, because it fails now: a worker killed right after a step ended, before the
control plane recorded the journal it sent. RabbitMQ hands the killed worker's step to
another at once, whose run may then resume from a journal still missing those ticks (the
step runs again, and the two runs' ticks mix in the stored journal), or from one with a gap
(the control plane's threads record one run's messages out of order; the run then fails
with "Journal gap"). The crash test waits for the journal first.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.app.conftest import WORKFLOWS
from tests.app.test_api_hitl import human_response
from tests.e2e.conftest import (
    Platform,
    free_redis_database,
    fresh_postgres_database,
    node,
    private_vhost,
)
from tests.support.processes import STOP_TIMEOUT, Process, Processes, poll
from workers.transports import REDIS_OWNER_BOUND

SUITE = WORKFLOWS / "durable" / "deployment.yml"
DEPLOYMENT = "DurableSuite"
TASKS = f"/deployments/{DEPLOYMENT}/tasks"
#: Threads of each service worker.
THREADS = 2
#: Service workers the module keeps running.
WORKERS = 2
#: Seconds a run waiting for input keeps its thread before it is let go (parked).
RELEASE_AFTER = 1.0
#: Bound on any one wait of a test; only a failing test waits this long.
DEADLINE = 45.0
#: The pipeline's steps, in order.
PIPELINE = ["one", "two", "three", "four", "five"]

pytestmark = pytest.mark.e2e


# -- one platform per broker --------------------------------------------------------------------


class Cluster:
    """The module's platform and its processes, and the service workers it keeps up."""

    def __init__(self, platform: Platform, processes: Processes) -> None:
        self.platform = platform
        self.processes = processes
        #: Live service workers by node name.
        self.workers: dict[str, Process] = {}
        self._started = 0

    def add_worker(self) -> Process:
        """Start one more service worker, under a name never used before."""
        self._started += 1
        name = f"w{self._started}"
        worker = self.platform.service_worker(name, deployment=DEPLOYMENT, concurrency=THREADS)
        self.workers[node(name)] = worker
        return worker

    def keep_workers(self) -> None:
        """Start workers until :data:`WORKERS` run, and wait until all are live."""
        for name, worker in list(self.workers.items()):
            if not worker.alive():
                del self.workers[name]
        while len(self.workers) < WORKERS:
            self.add_worker()
        self.platform.wait_for_workers(DEPLOYMENT, set(self.workers), timeout=DEADLINE)

    def restart_all(self) -> None:
        """Stop every process (SIGTERM, a warm shutdown, to all at once), then start the
        API server, the control-plane consumer and the service workers again."""
        running = [p for p in self.processes.started if p.alive()]
        for process in running:
            process.popen.send_signal(signal.SIGTERM)
        for process in running:
            assert process.popen.wait(timeout=STOP_TIMEOUT) == 0, process.output()
        self.workers.clear()
        self.platform.control_plane()  # (starting while the API server does: it is migrated)
        self.platform.serve()
        self.keep_workers()
        self.platform.wait_for_consumer(node("control-plane"), timeout=DEADLINE)

    def start_control_plane(self) -> None:
        """Start the control-plane consumer and wait until it consumes."""
        self.platform.control_plane()
        self.platform.wait_for_consumer(node("control-plane"), timeout=DEADLINE)


@pytest.fixture(scope="module", params=["redis", "amqp"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """The platform on a broker of its own and a fresh PostgreSQL database, serving the
    durable suite with two workers."""
    broker = free_redis_database() if request.param == "redis" else private_vhost()
    with broker as broker_url, fresh_postgres_database("celeriac_e2e_durable") as database_url:
        workdir = tmp_path_factory.mktemp(f"durable-{request.param}")
        started = Processes(workdir / "logs")
        platform = Platform(broker_url, database_url, workdir, started)
        platform.settings["CELERIAC_RELEASE_AFTER"] = str(RELEASE_AFTER)
        built = Cluster(platform, started)
        try:
            # (one after the other: the API server migrates the empty database as it starts)
            platform.serve(SUITE)
            built.start_control_plane()
            built.keep_workers()
            yield built
        finally:
            started.kill_all()
            platform.close()


@pytest.fixture
def processes(cluster: Cluster) -> Processes:
    """The module's processes, under the name whose logs a failing test shows (conftest)."""
    return cluster.processes


@pytest.fixture
def durable(cluster: Cluster, processes: Processes) -> Iterator[Cluster]:
    """The cluster with its two workers running; what a test leaves unfinished is
    cancelled after it, and workers it killed are replaced."""
    cluster.keep_workers()
    yield cluster
    for task_id, found in cluster.platform.tasks(DEPLOYMENT).items():
        if found["status"] not in {"succeeded", "failed", "cancelled", "timed_out"}:
            cluster.platform.http.post(f"{TASKS}/{task_id}/cancel")


# -- helpers ------------------------------------------------------------------------------------


def ok(response: httpx.Response) -> Any:
    """The JSON body of a 200 response."""
    assert response.status_code == 200, response.text
    return response.json()


def create(platform: Platform, service: str, **run_input: Any) -> str:
    """Queue a task of ``service`` with ``run_input``; its id."""
    body = {"service_id": service, "input": json.dumps(run_input)}
    return str(ok(platform.http.post(f"{TASKS}/create", json=body))["task_id"])


def task(platform: Platform, task_id: str) -> dict[str, Any]:
    found: dict[str, Any] = ok(platform.http.get(f"{TASKS}/{task_id}"))
    return found


def ended(platform: Platform, task_id: str) -> dict[str, Any]:
    """Wait until the task ended; the task."""
    found: dict[str, Any] = poll(
        lambda: task(platform, task_id),
        lambda t: t["status"] in {"succeeded", "failed", "cancelled", "timed_out"},
        DEADLINE,
        f"task {task_id} ended",
    )
    return found


def parked(platform: Platform, task_id: str) -> dict[str, Any]:
    """Wait until the task waits for input, parked; the task."""
    found: dict[str, Any] = poll(
        lambda: task(platform, task_id),
        lambda t: t["status"] == "waiting_input" and t["parked_at"] is not None,
        DEADLINE,
        f"task {task_id} parked",
    )
    return found


def answer(platform: Platform, task_id: str, response: str) -> None:
    """Send the task a HumanResponseEvent."""
    body = {"service_id": "ask", "event_obj_str": human_response(response)}
    ok(platform.http.post(f"{TASKS}/{task_id}/events", json=body))


def counts(log: Path) -> dict[str, int]:
    """How many times each step noted itself in ``log``."""
    seen: dict[str, int] = {}
    for line in log.read_text().split() if log.exists() else []:
        seen[line] = seen.get(line, 0) + 1
    return seen


def worker_of(platform: Platform, task_id: str) -> str | None:
    """The worker (node name) that holds the task now, from the database."""
    [(worker,)] = platform.query("SELECT worker FROM tasks WHERE id = %s", (task_id,))
    return None if worker is None else str(worker)


def streamed(platform: Platform, task_id: str) -> list[tuple[int, str, str]]:
    """The task's stored events out, in order: (seq, type, data as JSON text)."""
    rows = platform.query(
        "SELECT seq, type, data FROM events WHERE task_id = %s AND direction = 'out' ORDER BY seq",
        (task_id,),
    )
    return [(seq, kind, json.dumps(data)) for seq, kind, data in rows]


def assert_recorded_once(platform: Platform, task_id: str) -> list[tuple[int, str, str]]:
    """The task's stream, once its events still on their way are stored (a control-plane
    consumer killed with some in hand gets them back from Redis within
    ``REDIS_OWNER_BOUND``): no gap, no repeat, each step's message once, one ``StopEvent``
    last."""
    events = poll(
        lambda: streamed(platform, task_id),
        lambda events: [seq for seq, _, _ in events] == list(range(len(events))),
        REDIS_OWNER_BOUND + 10.0,
        f"the stream of task {task_id} without a gap",
    )
    for message in ("one done", "two done", "three done"):
        assert sum(message in data for _, _, data in events) == 1, (message, events)
    assert [kind for _, kind, _ in events].count("StopEvent") == 1, events
    assert events[-1][1] == "StopEvent", events
    return events


def pipeline_steps(platform: Platform, task_id: str) -> list[dict[str, Any]]:
    """The steps ``GET .../steps`` lists, once all five are there."""
    found: list[dict[str, Any]] = poll(
        lambda: ok(platform.http.get(f"{TASKS}/{task_id}/steps")),
        lambda steps: len(steps) >= len(PIPELINE),
        DEADLINE,
        f"the steps of task {task_id}",
    )
    return found


def held_in_three(platform: Platform, tmp_path: Path, name: str) -> tuple[str, Path]:
    """A pipeline task started with ``<log>.hold`` in place, waiting in step ``three``; its
    id and log."""
    log = tmp_path / f"{name}.log"
    Path(f"{log}.hold").touch()
    task_id = create(platform, "pipeline", log=str(log), pause=60)
    poll(lambda: counts(log), lambda seen: seen.get("three") == 1, DEADLINE, "step three")
    return task_id, log


def journaled(platform: Platform, task_id: str, names: list[str]) -> None:
    """Wait until the control plane recorded the steps ``names`` of the task's journal."""
    poll(
        lambda: [s["step"] for s in ok(platform.http.get(f"{TASKS}/{task_id}/steps"))],
        lambda steps: steps == names,
        DEADLINE,
        f"steps {names} of task {task_id} journaled",
    )


# -- a worker killed mid-step -------------------------------------------------------------------


@pytest.mark.slow
def test_a_durable_run_whose_worker_is_killed_resumes_on_another_from_its_journal(
    durable: Cluster, tmp_path: Path
) -> None:
    platform = durable.platform
    # Given a pipeline task in step three, on one of two workers, the steps before it done
    # and journaled
    task_id, log = held_in_three(platform, tmp_path, "crash")
    # (a worker killed before the control plane recorded what it sent, which RabbitMQ makes
    # likely by handing its step to the other worker at once, is another story: see the
    # module's doc)
    journaled(platform, task_id, PIPELINE[:2])
    victim = worker_of(platform, task_id)
    assert victim in durable.workers, (victim, sorted(durable.workers))
    [survivor] = set(durable.workers) - {victim}
    # When that worker is killed without a chance to say goodbye
    durable.workers.pop(victim).kill()
    # And step three is let through from now on
    Path(f"{log}.hold").unlink()
    # Then the task succeeds on the other worker
    done = ended(platform, task_id)
    assert (done["status"], done["result"]) == ("succeeded", {"total": 15}), done
    assert worker_of(platform, task_id) == survivor
    # And only the step in flight ran again: the finished ones were taken from the journal
    assert counts(log) == {"one": 1, "two": 1, "three": 2, "four": 1, "five": 1}
    # And the task is recorded once: the killed run lost, one run succeeded, on the survivor
    runs = done["attempt_history"]
    assert runs[0]["worker"] == victim and runs[0]["outcome"] == "lost", runs
    assert [r["outcome"] for r in runs].count("succeeded") == 1, runs
    assert runs[-1]["worker"] == survivor and runs[-1]["outcome"] == "succeeded", runs
    assert done["attempts"] == len(runs)
    assert_recorded_once(platform, task_id)
    # And its steps are listed once each, in order, none of them failed
    steps = pipeline_steps(platform, task_id)
    assert [s["step"] for s in steps] == PIPELINE, steps
    assert [s["outcome"] for s in steps] == [
        "returned Two",
        "returned Three",
        "returned Four",
        "returned Five",
        "returned StopEvent",
    ]
    assert all(s["attempt"] == 1 and s["run"] == 1 for s in steps), steps


# -- parked runs ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_parked_runs_hold_no_thread_and_resume_even_after_every_process_restarted(
    durable: Cluster, tmp_path: Path
) -> None:
    platform = durable.platform
    # Given more tasks that ask a question than the workers have threads
    threads = WORKERS * THREADS
    logs = [tmp_path / f"ask{n}.log" for n in range(threads + 2)]
    ids = [create(platform, "ask", log=str(log)) for log in logs]
    # Then all of them ask and are let go: none holds a thread (else the last two would
    # never start), nor a worker
    for task_id in ids:
        parked(platform, task_id)
    assert all(worker_of(platform, task_id) is None for task_id in ids)
    # When all but the last are answered, each with its own answer
    for n, task_id in enumerate(ids[:-1]):
        answer(platform, task_id, f"answer {n}")
    # Then each succeeds with its answer, its first step not run again
    for n, (task_id, log) in enumerate(zip(ids[:-1], logs, strict=False)):
        done = ended(platform, task_id)
        assert (done["status"], done["result"]) == (
            "succeeded",
            {"answer": f"answer {n}", "first": "done"},
        ), done
        assert done["parked_at"] is None
        assert counts(log) == {"first": 1, "ask": 2}
    # When every process stops, then starts again, while the last one is parked
    durable.restart_all()
    last, log = ids[-1], logs[-1]
    assert task(platform, last)["status"] == "waiting_input"
    # And it is answered
    answer(platform, last, "after the restart")
    # Then it succeeds with that answer, its first step not run again
    done = ended(platform, last)
    assert (done["status"], done["result"]) == (
        "succeeded",
        {"answer": "after the restart", "first": "done"},
    ), done
    assert counts(log) == {"first": 1, "ask": 2}


def test_a_parked_run_resumes_after_its_deployment_was_reloaded(
    durable: Cluster, tmp_path: Path
) -> None:
    platform = durable.platform
    # Given a task parked while it waits for an answer
    log = tmp_path / "reload.log"
    task_id = create(platform, "ask", log=str(log))
    parked(platform, task_id)
    # When the deployment is reloaded, the same file again
    reloaded = platform.http.post(
        "/deployments/create",
        params={"base_path": str(SUITE.parent), "reload": "true"},
        files={"config_file": (SUITE.name, SUITE.read_bytes())},
    )
    ok(reloaded)
    # And the task is answered
    answer(platform, task_id, "reloaded")
    # Then it resumes from its journal on the new version and succeeds with the answer
    done = ended(platform, task_id)
    assert (done["status"], done["result"]) == (
        "succeeded",
        {"answer": "reloaded", "first": "done"},
    ), done
    assert counts(log) == {"first": 1, "ask": 2}


# -- a control plane killed mid-run ---------------------------------------------------------------


@pytest.mark.slow
def test_a_durable_run_goes_on_while_the_control_plane_is_killed_and_started_again(
    durable: Cluster, tmp_path: Path
) -> None:
    platform = durable.platform
    # Given a pipeline task in step three
    task_id, log = held_in_three(platform, tmp_path, "plane")
    # When the control-plane consumer is killed, the run goes on without it, and it starts
    # again
    for process in durable.processes.started:
        if process.name == "control-plane" and process.alive():
            process.kill()
    Path(f"{log}.hold").unlink()
    poll(lambda: counts(log), lambda seen: seen.get("five") == 1, DEADLINE, "step five")
    durable.start_control_plane()
    # Then the task succeeds, no step run twice, recorded once
    done = ended(platform, task_id)
    assert (done["status"], done["result"]) == ("succeeded", {"total": 15}), done
    assert counts(log) == {name: 1 for name in PIPELINE}
    assert [r["outcome"] for r in done["attempt_history"]] == ["succeeded"]
    assert_recorded_once(platform, task_id)
    steps = pipeline_steps(platform, task_id)
    assert [s["step"] for s in steps] == PIPELINE, steps
    assert all(s["attempt"] == 1 for s in steps), steps
