"""End to end on Redis and PostgreSQL: sessions, streams and human input across two workers.

LlamaDeploy's scenarios 3 (session counter), 6 (streaming order) and 7 (human in the loop)
run against separate processes: the API server, the control-plane consumer and two service
workers. The Context of a session and the answer to a waiting task must reach whichever worker
runs the task. One platform serves every test of this module, to keep it quick.
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
from workflows.context.serializers import JsonSerializer
from workflows.events import HumanResponseEvent

from tests.conftest import EXAMPLES
from tests.e2e.conftest import Platform, free_redis_database, fresh_postgres_database, node, script
from tests.support.processes import Processes, poll

LIVE = Path(__file__).resolve().parent.parent / "app" / "workflows_live"
#: Deployment name -> the folder of its example, copied into the platform's working folder.
DEPLOYMENTS = {
    "Counter": EXAMPLES / "counter",
    "MultiStep": EXAMPLES / "multistep",
    "HumanInTheLoop": EXAMPLES / "hitl",
    "Pause": LIVE / "pause",
}
WORKERS = ("w1", "w2")
#: Tasks each service worker runs at once: with a prefetch of one, a worker holds no more.
CONCURRENCY = 4
#: Human-in-the-loop tasks waiting at once: as many as both workers hold, so each holds its
#: share, with every thread running a task that waits for its answer.
HITL_TASKS = CONCURRENCY * len(WORKERS)
#: Bound on any one wait of a test; only a failing test waits this long.
DEADLINE = 30.0
SSE = {"Accept": "text/event-stream"}

pytestmark = pytest.mark.e2e


# -- one platform for the module -------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_broker() -> Iterator[str]:
    """A Redis broker URL on a database number nobody uses now, flushed after the module."""
    with free_redis_database() as url:
        yield url


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database (SQLAlchemy URL), dropped after the module."""
    with fresh_postgres_database("celeriac_e2e_sessions") as url:
        yield url


@pytest.fixture(scope="module")
def cluster(
    redis_broker: str, postgres_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Platform, Processes]]:
    """API server, control-plane consumer and two service workers serving four deployments."""
    workdir = tmp_path_factory.mktemp("sessions-distributed")
    started = Processes(workdir / "logs")
    platform = Platform(redis_broker, postgres_database, workdir, started)
    try:
        for name, folder in DEPLOYMENTS.items():
            shutil.copytree(folder, workdir / name)
        # Given the API server (deploying the first file at start, the others over HTTP)
        platform.serve(workdir / "Counter" / "deployment.yml")
        for name in list(DEPLOYMENTS)[1:]:
            deploy(platform, workdir / name / "deployment.yml")
        # And the control-plane consumer and two service workers of every deployment
        platform.control_plane()
        for worker in WORKERS:
            argv = [script("celeriac"), "worker"]
            for name in DEPLOYMENTS:
                argv += ["-d", name]
            argv += ["-c", str(CONCURRENCY), "-n", node(worker), "-l", "WARNING"]
            platform.start(worker, argv, database=False)
        for name in DEPLOYMENTS:
            platform.wait_for_workers(name, {node(w) for w in WORKERS})
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


def deploy(platform: Platform, path: Path) -> None:
    """Deploy a file over HTTP, its folder being the base path on the server's host."""
    response = platform.http.post(
        "/deployments/create",
        params={"base_path": str(path.parent)},
        files={"config_file": (path.name, path.read_bytes())},
    )
    assert response.status_code == 200, response.text


# -- helpers ---------------------------------------------------------------------------------


def ok(response: httpx.Response) -> Any:
    """The JSON body of a 200 response."""
    assert response.status_code == 200, response.text
    return response.json()


def new_session(platform: Platform, deployment: str) -> str:
    """Create a session; its id."""
    session_id: str = ok(platform.http.post(f"/deployments/{deployment}/sessions/create"))[
        "session_id"
    ]
    return session_id


def create(
    platform: Platform, deployment: str, session_id: str | None = None, **kwargs: Any
) -> dict[str, Any]:
    """``tasks/create``; the task."""
    params = {"session_id": session_id} if session_id else {}
    body = {"input": json.dumps(kwargs)}
    task: dict[str, Any] = ok(
        platform.http.post(f"/deployments/{deployment}/tasks/create", params=params, json=body)
    )
    return task


def run(platform: Platform, deployment: str, session_id: str) -> Any:
    """``tasks/run`` in a session; the result."""
    return ok(
        platform.http.post(
            f"/deployments/{deployment}/tasks/run",
            params={"session_id": session_id, "timeout": DEADLINE},
            json={"input": "{}"},
        )
    )


def task_of(platform: Platform, deployment: str, task_id: str) -> dict[str, Any]:
    """``GET tasks/{id}``."""
    task: dict[str, Any] = ok(platform.http.get(f"/deployments/{deployment}/tasks/{task_id}"))
    return task


def human_response(response: str, *, legacy: bool) -> str:
    """A HumanResponseEvent as ``event_obj_str``, under the workflows package's qualified name
    or under llama-index-core's, as LlamaDeploy clients send it."""
    text = JsonSerializer().serialize(HumanResponseEvent(response=response))  # type: ignore[call-arg]
    if not legacy:
        return text
    parsed = json.loads(text)
    parsed["qualified_name"] = "llama_index.core.workflow.events.HumanResponseEvent"
    return json.dumps(parsed)


def sse_messages(stream: httpx.Response) -> Iterator[dict[str, Any]]:
    """The server-sent events of a streamed response, as each completes: ``{id?, event, data}``."""
    deadline = time.monotonic() + DEADLINE
    buffer = ""
    for chunk in stream.iter_text():
        assert time.monotonic() < deadline, "the stream did not end in time"
        buffer += chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            fields: dict[str, Any] = {}
            for line in block.splitlines():
                if line and not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
            if "data" in fields:
                fields["data"] = json.loads(fields["data"])
                yield fields


def ids(messages: list[dict[str, Any]]) -> list[int]:
    """The ``id`` of every message that has one."""
    return [int(m["id"]) for m in messages if "id" in m]


# -- scenarios -------------------------------------------------------------------------------


def test_counter_keeps_its_context_per_session_across_workers(platform: Platform) -> None:
    """LlamaDeploy scenario 3 on two workers: "1", "2" in a session, "1" in a new one."""
    # Given a session, when tasks run in it and in a new session
    first = new_session(platform, "Counter")
    results = [run(platform, "Counter", first), run(platform, "Counter", first)]
    results.append(run(platform, "Counter", new_session(platform, "Counter")))
    results.append(run(platform, "Counter", first))
    # Then the count carries over within a session only, whichever worker ran each task
    assert results == ["1", "2", "1", "3"]
    # And the Context is stored as JSON in PostgreSQL
    ((state,),) = platform.query("SELECT state FROM sessions WHERE id = %s", (first,))
    assert isinstance(state, dict) and state
    assert json.loads(json.dumps(state)) == state

    # When four tasks are sent to a new session at once
    session_id = new_session(platform, "Counter")
    sent = [create(platform, "Counter", session_id)["task_id"] for _ in range(4)]
    tasks = platform.wait_for_tasks("Counter", sent, timeout=DEADLINE)
    # Then they ran one after the other, in order, each with its own result
    done = [tasks[i] for i in sent]
    assert [(t["status"], t["result"]) for t in done] == [
        ("succeeded", "1"),
        ("succeeded", "2"),
        ("succeeded", "3"),
        ("succeeded", "4"),
    ]
    for before, after in itertools.pairwise(done):
        started = dt.datetime.fromisoformat(after["started_at"])
        assert started > dt.datetime.fromisoformat(before["finished_at"]), (before, after)


def test_multistep_streams_progress_in_order_then_the_result(platform: Platform) -> None:
    """LlamaDeploy scenario 6: NDJSON progress 0.3, 0.6, 0.9, then the final result."""
    # Given a multistep task, followed from the moment it was created
    task = create(platform, "MultiStep", message="hello_world")
    url = f"/deployments/MultiStep/tasks/{task['task_id']}/events"
    lines: list[dict[str, Any]] = []
    deadline = time.monotonic() + DEADLINE
    with platform.http.stream(
        "GET", url, params={"session_id": task["session_id"]}, timeout=DEADLINE
    ) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            assert time.monotonic() < deadline, "the stream did not end in time"
            if line.strip():
                lines.append(json.loads(line))
    # Then the progress came in order, then the result
    assert [line["progress"] for line in lines[:-1]] == [0.3, 0.6, 0.9]
    assert lines[-1] == {"result": "hello_world_result_result_result"}
    done = task_of(platform, "MultiStep", task["task_id"])
    assert (done["status"], done["result"]) == ("succeeded", "hello_world_result_result_result")


def test_resumed_sse_stream_has_no_gap_and_no_duplicate(platform: Platform) -> None:
    # Given a task that streams an event, pauses, streams another and ends
    task = create(platform, "Pause", seconds=2)
    url = f"/deployments/Pause/tasks/{task['task_id']}/events"
    # When a client leaves its stream after the first event
    with platform.http.stream("GET", url, headers=SSE, timeout=DEADLINE) as stream:
        seen = [next(sse_messages(stream))]
    status_when_left = task_of(platform, "Pause", task["task_id"])["status"]
    # And comes back with the id of the last event it saw
    resume = {**SSE, "Last-Event-ID": seen[-1]["id"]}
    with platform.http.stream("GET", url, headers=resume, timeout=DEADLINE) as stream:
        rest = list(sse_messages(stream))
    # Then the first event had come while the task ran, and the rest came exactly once
    assert status_when_left == "running"
    assert ids(seen) == [0]
    assert ids(seen + rest) == [0, 1, 2]
    assert [m["event"] for m in seen + rest] == ["Note", "Note", "StopEvent", "end"]
    assert rest[-1]["data"] == {"task_id": task["task_id"], "status": "succeeded"}
    # And a resume after the last event gives only the end
    after_last = {**SSE, "Last-Event-ID": "2"}
    with platform.http.stream("GET", url, headers=after_last, timeout=DEADLINE) as stream:
        assert [m["event"] for m in sse_messages(stream)] == ["end"]


def test_every_process_outlived_the_scenarios(platform: Platform, processes: Processes) -> None:
    """No process of the platform died, and both workers still serve every deployment."""
    assert [p.name for p in processes.started if not p.alive()] == []
    for name in DEPLOYMENTS:
        assert platform.workers_of(name) == {node(w) for w in WORKERS}


def test_human_answers_reach_the_worker_that_runs_each_task(platform: Platform) -> None:
    """LlamaDeploy scenario 7 on two workers: every waiting task gets its own answer."""
    # Given tasks waiting for a human on every thread of both workers
    sent = [create(platform, "HumanInTheLoop")["task_id"] for _ in range(HITL_TASKS)]
    poll(
        lambda: platform.query(
            "SELECT count(DISTINCT task_id) FROM events WHERE type = 'InputRequiredEvent' "
            "AND direction = 'out' AND task_id = ANY(%s)",
            (sent,),
        )[0][0],
        lambda asked: asked == HITL_TASKS,
        DEADLINE,
        "every task asked its question",
    )
    statuses_before = [task_of(platform, "HumanInTheLoop", i)["status"] for i in sent]
    by_worker = platform.workers_by_task(sent)
    assert by_worker == {node(w): CONCURRENCY for w in WORKERS}, by_worker
    # When each is answered, half in LlamaDeploy's legacy form
    for n, task_id in enumerate(sent):
        event = human_response(f"{42 + n}", legacy=n % 2 == 1)
        body = {"service_id": "ask", "event_obj_str": event}
        url = f"/deployments/HumanInTheLoop/tasks/{task_id}/events"
        assert ok(platform.http.post(url, json=body)) == body
    # Then each ends with its own answer, whichever worker ran it
    tasks = platform.wait_for_tasks("HumanInTheLoop", sent, timeout=DEADLINE)
    assert [(tasks[i]["status"], tasks[i]["result"]) for i in sent] == [
        ("succeeded", f"{42 + n}") for n in range(HITL_TASKS)
    ]
    # And each answer is stored once in its task's log
    rows = platform.query(
        "SELECT task_id, count(*) FROM events WHERE direction = 'in' AND task_id = ANY(%s) "
        "GROUP BY task_id",
        (sent,),
    )
    assert dict(rows) == dict.fromkeys(sent, 1)
    # And a late answer is refused
    late = {"service_id": "ask", "event_obj_str": human_response("late", legacy=False)}
    refused = platform.http.post(f"/deployments/HumanInTheLoop/tasks/{sent[0]}/events", json=late)
    assert refused.status_code == 409, refused.text
    # And while their questions were out, the tasks said they waited for input
    assert statuses_before == ["waiting_input"] * HITL_TASKS
