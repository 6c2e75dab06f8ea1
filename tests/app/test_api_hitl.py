"""Human in the loop: ``POST tasks/{id}/events`` answers a task that waits for a person."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from workflows.context.serializers import JsonSerializer
from workflows.events import HumanResponseEvent

from app.models import Event
from app.server import Server
from config.settings import Settings
from tests.app.conftest import (
    TERMINAL,
    asked,
    assert_error,
    deployed,
    field_errors,
    ok,
    wait_for_task,
)
from tests.conftest import EXAMPLES

#: Every test here ends with all its tasks ended: a task never stays queued.
pytestmark = pytest.mark.usefixtures("no_task_left_behind")

HITL = EXAMPLES / "hitl" / "deployment.yml"
IMPATIENT = Path(__file__).resolve().parent / "workflows_live" / "impatient" / "deployment.yml"
TASKS = "/deployments/HumanInTheLoop/tasks"
#: Bound on any one wait of a live stream; only a failing test waits this long.
DEADLINE = 10.0
_events = Event.__table__


def human_response(response: str, *, legacy: bool = False) -> str:
    """A HumanResponseEvent as ``event_obj_str``: the workflows package's qualified name, or
    the one LlamaDeploy clients built on llama-index-core send."""
    text = JsonSerializer().serialize(HumanResponseEvent(response=response))  # type: ignore[call-arg]
    if not legacy:
        return text
    parsed = json.loads(text)
    parsed["qualified_name"] = "llama_index.core.workflow.events.HumanResponseEvent"
    return json.dumps(parsed)


def send(client: FlaskClient, task_id: str, event_obj_str: str, **query: str) -> Any:
    """POST an event into a task; the raw response."""
    return client.post(
        f"{TASKS}/{task_id}/events",
        query_string=query,
        json={"service_id": "ask", "event_obj_str": event_obj_str},
    )


def create(client: FlaskClient, **query: str) -> dict[str, Any]:
    """``tasks/create`` of the human-in-the-loop example; the task."""
    task: dict[str, Any] = ok(client.post(f"{TASKS}/create", query_string=query, json={}))
    return task


def status_of(client: FlaskClient, task_id: str) -> str:
    """A task's status now."""
    status: str = ok(client.get(f"{TASKS}/{task_id}"))["status"]
    return status


def inputs(server: Server, task_id: str) -> list[dict[str, Any]]:
    """The events sent into a task, read straight from the events table."""
    query = (
        select(_events.c.seq, _events.c.type, _events.c.qualified_name, _events.c.data)
        .where(_events.c.task_id == task_id, _events.c.direction == "in")
        .order_by(_events.c.seq)
    )
    with server.plane.db.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


@pytest.fixture
def hitl(client: FlaskClient) -> Iterator[FlaskClient]:
    """The client, with the human-in-the-loop example deployed; after the test, a task that
    still waits (the test failed early) gets an answer, so that no run holds a worker thread."""
    deployed(client, HITL)
    yield client
    for task in ok(client.get(TASKS, query_string={"limit": 1000})):
        if task["status"] not in TERMINAL:
            send(client, task["task_id"], human_response("left over"))


@pytest.fixture
def waiting(server: Server, hitl: FlaskClient) -> dict[str, Any]:
    """A task that asked its question and waits for the answer."""
    task = create(hitl)
    asked(server, task["task_id"])
    return task


# -- the answer reaches the task ---------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["workflows", "llama_index"])
def test_human_answer_becomes_the_result(
    server: Server, hitl: FlaskClient, live_server: str, legacy: bool
) -> None:
    """LlamaDeploy scenario 7 over real HTTP: the question streams, "42" is the result."""
    event_obj_str = human_response("42", legacy=legacy)
    with httpx.Client(base_url=live_server, timeout=DEADLINE) as http:
        # Given a task followed on its raw NDJSON stream
        task = http.post(f"{TASKS}/create", json={"input": '{"question": "Six times seven?"}'})
        task_id, session_id = task.json()["task_id"], task.json()["session_id"]
        stream_url = f"{TASKS}/{task_id}/events"
        query = {"session_id": session_id, "raw_event": "true"}
        received: list[dict[str, Any]] = []
        deadline = time.monotonic() + DEADLINE
        with http.stream("GET", stream_url, params=query) as stream:
            for line in stream.iter_lines():
                assert time.monotonic() < deadline, "the stream did not end in time"
                if not line.strip():
                    continue
                received.append(json.loads(line))
                if len(received) > 1:
                    continue
                # When the question arrives, the task waits for input
                status_before = http.get(f"{TASKS}/{task_id}").json()["status"]
                # And the answer is sent the LlamaDeploy way
                body = {"service_id": "ask", "event_obj_str": event_obj_str}
                sent = http.post(stream_url, params={"session_id": session_id}, json=body)
                status_after = http.get(f"{TASKS}/{task_id}").json()["status"]
        done = http.get(f"{TASKS}/{task_id}").json()
    # Then the question came with its prefix
    assert received[0]["qualified_name"] == "workflows.events.InputRequiredEvent"
    assert received[0]["value"]["prefix"] == "Six times seven?"
    # And the answer was echoed back and set the task going again
    assert sent.status_code == 200, sent.text
    assert sent.json() == body
    assert status_after in {"running", "succeeded"}
    # And the answer is the result, streamed last
    assert received[1:] == [
        {
            "__is_pydantic": True,
            "value": {"result": "42"},
            "qualified_name": "workflows.events.StopEvent",
        }
    ]
    assert (done["status"], done["result"]) == ("succeeded", "42")
    # And the answer is stored in the task's event log, as sent in
    (stored,) = inputs(server, task_id)
    assert stored["seq"] == 0
    assert stored["qualified_name"] == json.loads(event_obj_str)["qualified_name"]
    assert stored["type"] == "HumanResponseEvent"
    assert stored["data"] == json.loads(event_obj_str)
    # And while the question was out, the task said it waited for input
    assert status_before == "waiting_input"


def test_answer_through_the_test_client(hitl: FlaskClient, waiting: dict[str, Any]) -> None:
    # When the waiting task is answered without a session id
    response = send(hitl, waiting["task_id"], human_response("forty-two"))
    # Then it ends with the answer, readable in LlamaDeploy's result shape too
    assert ok(response)["event_obj_str"] == human_response("forty-two")
    assert wait_for_task(hitl, "HumanInTheLoop", waiting["task_id"])["result"] == "forty-two"
    result = ok(hitl.get(f"{TASKS}/{waiting['task_id']}/results"))
    assert (result["status"], result["result"]) == ("succeeded", "forty-two")


def test_status_is_waiting_input_while_tasks_wait(server: Server, hitl: FlaskClient) -> None:
    # Given three tasks that asked their question (fewer than the worker's threads)
    tasks = [create(hitl)["task_id"] for _ in range(3)]
    for task_id in tasks:
        asked(server, task_id)
    # When they are read, then answered
    before = [status_of(hitl, task_id) for task_id in tasks]
    after = []
    for n, task_id in enumerate(tasks):
        ok(send(hitl, task_id, human_response(f"answer {n}")))
        after.append(status_of(hitl, task_id))
    results = [wait_for_task(hitl, "HumanInTheLoop", task_id)["result"] for task_id in tasks]
    # Then they ended with their answers; they waited for input until answered, not after
    assert results == ["answer 0", "answer 1", "answer 2"]
    assert all(status in {"running", "succeeded"} for status in after), after
    assert before == ["waiting_input"] * 3


def test_answers_reach_tasks_that_hold_every_worker_thread(
    server: Server, settings: Settings, client: FlaskClient
) -> None:
    """A worker whose every thread runs a task waiting for a human still takes the answers."""
    # Given as many waiting tasks as the deployment's worker has threads (the workflow gives
    # up after 8 s, so that a lost answer fails the test instead of holding the worker)
    deployed(client, IMPATIENT)
    count = settings.worker_concurrency
    url = "/deployments/Impatient/tasks"
    tasks = [ok(client.post(f"{url}/create", json={}))["task_id"] for _ in range(count)]
    for task_id in tasks:
        asked(server, task_id)
    # When each is answered
    for n, task_id in enumerate(tasks):
        body = {"service_id": "ask", "event_obj_str": human_response(f"{n}")}
        ok(client.post(f"{url}/{task_id}/events", json=body))
    # Then each ends with its own answer
    done = [wait_for_task(client, "Impatient", task_id) for task_id in tasks]
    assert [(t["status"], t["result"]) for t in done] == [
        ("succeeded", f"{n}") for n in range(count)
    ], [(t["status"], (t["error"] or {}).get("message")) for t in done]


def test_event_sent_before_the_task_started_is_delivered(server: Server, hitl: FlaskClient) -> None:
    # Given a session busy with a task that waits, and a second task queued behind it
    session_id = ok(hitl.post("/deployments/HumanInTheLoop/sessions/create"))["session_id"]
    busy = create(hitl, session_id=session_id)
    asked(server, busy["task_id"])
    queued = create(hitl, session_id=session_id)
    assert status_of(hitl, queued["task_id"]) == "queued"
    # When the queued task is answered before it started
    assert ok(send(hitl, queued["task_id"], human_response("early"), session_id=session_id))
    assert status_of(hitl, queued["task_id"]) == "queued"
    assert [e["data"] for e in inputs(server, queued["task_id"])] == [
        json.loads(human_response("early"))
    ]
    # And then the session is freed
    ok(send(hitl, busy["task_id"], human_response("first")))
    assert wait_for_task(hitl, "HumanInTheLoop", busy["task_id"])["result"] == "first"
    # Then the queued task runs and takes the answer sent while it waited its turn
    done = wait_for_task(hitl, "HumanInTheLoop", queued["task_id"])
    assert (done["status"], done["result"]) == ("succeeded", "early")


def test_events_are_numbered_per_task(server: Server, hitl: FlaskClient) -> None:
    # Given two waiting tasks
    first, second = create(hitl), create(hitl)
    for task in (first, second):
        asked(server, task["task_id"])
    # When each is answered
    ok(send(hitl, first["task_id"], human_response("a")))
    ok(send(hitl, second["task_id"], human_response("b")))
    # Then each has its own answer, numbered from zero in its own log
    assert wait_for_task(hitl, "HumanInTheLoop", first["task_id"])["result"] == "a"
    assert wait_for_task(hitl, "HumanInTheLoop", second["task_id"])["result"] == "b"
    assert [e["seq"] for e in inputs(server, first["task_id"])] == [0]
    assert [e["seq"] for e in inputs(server, second["task_id"])] == [0]


# -- refusals ----------------------------------------------------------------------------------


def test_event_to_an_ended_task_is_a_conflict(server: Server, hitl: FlaskClient) -> None:
    # Given a task that got its answer and ended
    task = create(hitl)
    asked(server, task["task_id"])
    ok(send(hitl, task["task_id"], human_response("42")))
    assert wait_for_task(hitl, "HumanInTheLoop", task["task_id"])["result"] == "42"
    # When another answer is sent
    body = assert_error(send(hitl, task["task_id"], human_response("43")), 409)
    # Then it is refused, naming the status, and nothing changes
    assert body["errors"]["status"] == "succeeded"
    assert task["task_id"] in body["message"]
    assert len(inputs(server, task["task_id"])) == 1
    assert ok(hitl.get(f"{TASKS}/{task['task_id']}"))["result"] == "42"


@pytest.mark.parametrize(
    "event_obj_str",
    [
        "{not json",
        '"just a string"',
        "[1, 2]",
        '{"value": {"response": "42"}}',
        '{"qualified_name": 42, "value": {}}',
    ],
    ids=["not-json", "string", "list", "no-qualified-name", "bad-qualified-name"],
)
def test_malformed_event_is_refused(
    server: Server, hitl: FlaskClient, waiting: dict[str, Any], event_obj_str: str
) -> None:
    # When a waiting task is sent something that is not a serialized event
    body = assert_error(send(hitl, waiting["task_id"], event_obj_str), 422)
    # Then it is refused, naming the field, and the task still waits
    assert "event_obj_str" in field_errors(body)
    assert inputs(server, waiting["task_id"]) == []
    assert status_of(hitl, waiting["task_id"]) in {"running", "waiting_input"}
    # And a proper answer still gets through
    ok(send(hitl, waiting["task_id"], human_response("42")))
    assert wait_for_task(hitl, "HumanInTheLoop", waiting["task_id"])["result"] == "42"


def test_event_without_event_obj_str_is_refused(hitl: FlaskClient, waiting: dict[str, Any]) -> None:
    response = hitl.post(f"{TASKS}/{waiting['task_id']}/events", json={"service_id": "ask"})
    body = assert_error(response, 422)
    assert "event_obj_str" in field_errors(body)
    ok(send(hitl, waiting["task_id"], human_response("42")))
    assert wait_for_task(hitl, "HumanInTheLoop", waiting["task_id"])["result"] == "42"


def test_event_to_an_unknown_task_is_not_found(hitl: FlaskClient) -> None:
    body = assert_error(send(hitl, "nope", human_response("42")), 404)
    assert "nope" in body["message"]
    response = hitl.post(
        "/deployments/Nope/tasks/nope/events", json={"event_obj_str": human_response("42")}
    )
    assert_error(response, 404)


def test_event_in_the_wrong_session_is_not_found(
    server: Server, hitl: FlaskClient, waiting: dict[str, Any]
) -> None:
    body = assert_error(
        send(hitl, waiting["task_id"], human_response("42"), session_id="other"), 404
    )
    assert "other" in body["message"]
    assert inputs(server, waiting["task_id"]) == []
    ok(send(hitl, waiting["task_id"], human_response("42"), session_id=waiting["session_id"]))
    assert wait_for_task(hitl, "HumanInTheLoop", waiting["task_id"])["result"] == "42"
