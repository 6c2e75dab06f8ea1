"""``GET tasks/{id}/events``: NDJSON and server-sent event streams, live, replayed and resumed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask.testing import FlaskClient

from tests.app.conftest import FAILING, assert_error, deployed, ok, wait_for_task
from tests.conftest import MULTISTEP

#: Every test here ends with all its tasks ended: a task never stays queued.
pytestmark = pytest.mark.usefixtures("no_task_left_behind")

PAUSE = Path(__file__).resolve().parent / "workflows_live" / "pause" / "deployment.yml"
SSE = {"Accept": "text/event-stream"}
#: LlamaDeploy scenario 6: the progress of the three steps, then the final result.
PROGRESS = [0.3, 0.6, 0.9]
FINAL = "hello_world_result_result_result"
#: Bound on any one wait of a live stream; only a failing test waits this long.
DEADLINE = 10.0


def create(client: FlaskClient, deployment: str, **kwargs: Any) -> dict[str, Any]:
    """``tasks/create`` that must succeed; the task."""
    body = {"input": json.dumps(kwargs)}
    task: dict[str, Any] = ok(client.post(f"/deployments/{deployment}/tasks/create", json=body))
    return task


def ndjson(text: str) -> list[dict[str, Any]]:
    """The objects of an NDJSON body; empty lines are keep-alives."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def sse(text: str) -> list[dict[str, Any]]:
    """The messages of a server-sent event stream, each as ``{id?, event, data}``."""
    messages = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
            messages.append(fields)
    return messages


def ids(messages: list[dict[str, Any]]) -> list[int]:
    """The ``id`` of every message that has one."""
    return [int(m["id"]) for m in messages if "id" in m]


def events_url(deployment: str, task: dict[str, Any]) -> str:
    """Where a task's events stream."""
    return f"/deployments/{deployment}/tasks/{task['task_id']}/events"


@pytest.fixture
def multistep(client: FlaskClient) -> dict[str, Any]:
    """A multistep task that ran to its end; the task."""
    deployed(client, MULTISTEP)
    task = create(client, "MultiStep", message="hello_world")
    assert wait_for_task(client, "MultiStep", task["task_id"])["status"] == "succeeded"
    return task


# -- NDJSON (LlamaDeploy's stream) -------------------------------------------------------------


def test_ndjson_streams_progress_in_order_then_the_result(client: FlaskClient) -> None:
    """LlamaDeploy scenario 6: progress 0.3, 0.6, 0.9, then the final result."""
    # Given a multistep task, followed from the moment it was created
    deployed(client, MULTISTEP)
    task = create(client, "MultiStep", message="hello_world")
    response = client.get(events_url("MultiStep", task))
    # Then the stream is NDJSON of the events' fields, ending with the StopEvent's
    assert response.status_code == 200
    assert response.mimetype == "application/x-ndjson"
    lines = ndjson(response.get_data(as_text=True))
    assert [line["progress"] for line in lines[:-1]] == PROGRESS
    assert [line["message"] for line in lines[:-1]] == [
        "step one: hello_world_result",
        "step two: hello_world_result_result",
        f"step three: {FINAL}",
    ]
    assert lines[-1] == {"result": FINAL}
    # And the task had ended when the stream did
    assert ok(client.get(f"/deployments/MultiStep/tasks/{task['task_id']}"))["result"] == FINAL


def test_ndjson_with_the_session_id_of_the_task(client: FlaskClient) -> None:
    deployed(client, MULTISTEP)
    task = create(client, "MultiStep", message="hello_world")
    response = client.get(
        events_url("MultiStep", task), query_string={"session_id": task["session_id"]}
    )
    assert [line.get("progress") for line in ndjson(response.get_data(as_text=True))] == [
        *PROGRESS,
        None,
    ]


def test_raw_events_carry_their_qualified_name(
    client: FlaskClient, multistep: dict[str, Any]
) -> None:
    # When the stream is read with raw_event=true
    response = client.get(events_url("MultiStep", multistep), query_string={"raw_event": "true"})
    lines = ndjson(response.get_data(as_text=True))
    # Then each line is llama-index's serialized form, with the event's qualified name
    assert len(lines) == 4
    for line in lines:
        assert set(line) == {"__is_pydantic", "value", "qualified_name"}
        assert line["__is_pydantic"] is True
    names = [line["qualified_name"] for line in lines]
    # (named by the example's own module, not the private package it is imported under)
    assert names[:-1] == ["workflow.ProgressEvent"] * 3
    assert names[-1] == "workflows.events.StopEvent"
    assert [line["value"].get("progress") for line in lines] == [*PROGRESS, None]
    assert lines[-1]["value"] == {"result": FINAL}


def test_stream_of_an_unknown_task_is_not_found(client: FlaskClient) -> None:
    deployed(client, MULTISTEP)
    assert_error(client.get("/deployments/MultiStep/tasks/nope/events"), 404)
    assert_error(client.get("/deployments/MultiStep/tasks/nope/events", headers=SSE), 404)
    assert_error(client.get("/deployments/Nope/tasks/nope/events"), 404)


def test_stream_in_the_wrong_session_is_not_found(
    client: FlaskClient, multistep: dict[str, Any]
) -> None:
    url = events_url("MultiStep", multistep)
    assert_error(client.get(url, query_string={"session_id": "other"}), 404)


# -- server-sent events ------------------------------------------------------------------------


def test_sse_numbers_events_from_zero_and_ends_with_the_status(
    client: FlaskClient, multistep: dict[str, Any]
) -> None:
    # When the stream is read as server-sent events
    response = client.get(events_url("MultiStep", multistep), headers=SSE)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    messages = sse(response.get_data(as_text=True))
    # Then the events have ids 0..n-1, their type, qualified name and fields
    assert ids(messages) == [0, 1, 2, 3]
    events, end = messages[:-1], messages[-1]
    assert [m["event"] for m in events] == ["ProgressEvent"] * 3 + ["StopEvent"]
    for m in events:
        assert m["data"]["type"] == m["event"]
        assert m["data"]["qualified_name"].endswith(f".{m['event']}")
    assert [m["data"]["data"].get("progress") for m in events] == [*PROGRESS, None]
    assert events[-1]["data"]["data"] == {"result": FINAL}
    # And a last "end" event, without id, says how the task ended
    assert end["event"] == "end"
    assert "id" not in end
    assert end["data"] == {"task_id": multistep["task_id"], "status": "succeeded"}


def test_sse_of_a_failed_task_ends_with_failed(client: FlaskClient) -> None:
    deployed(client, FAILING)
    task = create(client, "Failing")
    wait_for_task(client, "Failing", task["task_id"])
    messages = sse(client.get(events_url("Failing", task), headers=SSE).get_data(as_text=True))
    assert messages[-1]["event"] == "end"
    assert messages[-1]["data"] == {"task_id": task["task_id"], "status": "failed"}


@pytest.mark.parametrize("last", [-1, 0, 1, 2])
def test_resume_after_an_event_gives_exactly_the_rest(
    client: FlaskClient, multistep: dict[str, Any], last: int
) -> None:
    # Given the whole stream
    url = events_url("MultiStep", multistep)
    whole = sse(client.get(url, headers=SSE).get_data(as_text=True))
    # When a client resumes after event ``last``, by header or by query
    # (each streamed response is read before the next request: they share Flask's context)
    header = {**SSE, "Last-Event-ID": str(last)}
    by_header = client.get(url, headers=header).get_data(as_text=True)
    query = {"last_event_id": last}
    by_query = client.get(url, headers=SSE, query_string=query).get_data(as_text=True)
    # Then it gets the events after it, no gap and no duplicate, then the end
    for text in (by_header, by_query):
        rest = sse(text)
        assert ids(rest) == list(range(last + 1, 4))
        assert rest == whole[last + 1 :]


def test_resume_after_the_last_event_gives_only_the_end(
    client: FlaskClient, multistep: dict[str, Any]
) -> None:
    url = events_url("MultiStep", multistep)
    for headers in ({**SSE, "Last-Event-ID": "3"}, {**SSE, "Last-Event-ID": "99"}):
        rest = sse(client.get(url, headers=headers).get_data(as_text=True))
        assert rest == [
            {"event": "end", "data": {"task_id": multistep["task_id"], "status": "succeeded"}}
        ]


def test_a_reconnecting_clients_header_wins_over_the_query_it_first_used(
    client: FlaskClient, multistep: dict[str, Any]
) -> None:
    # An EventSource reconnects to the URL it was given, adding the last id it saw
    url = events_url("MultiStep", multistep)
    headers = {**SSE, "Last-Event-ID": "2"}
    text = client.get(url, headers=headers, query_string={"last_event_id": 0})
    assert ids(sse(text.get_data(as_text=True))) == [3]


def test_bad_last_event_id_is_refused(client: FlaskClient, multistep: dict[str, Any]) -> None:
    url = events_url("MultiStep", multistep)
    body = assert_error(client.get(url, headers={**SSE, "Last-Event-ID": "three"}), 422)
    assert "Last-Event-ID" in body["errors"]


def test_client_arriving_after_the_end_gets_the_whole_stream(client: FlaskClient) -> None:
    # Given a stream followed live from the start
    deployed(client, MULTISTEP)
    task = create(client, "MultiStep", message="hello_world")
    url = events_url("MultiStep", task)
    live_sse = client.get(url, headers=SSE).get_data(as_text=True)
    live_ndjson = client.get(url).get_data(as_text=True)
    assert wait_for_task(client, "MultiStep", task["task_id"])["status"] == "succeeded"
    # When clients connect once the task has ended
    late_sse = client.get(url, headers=SSE).get_data(as_text=True)
    late_ndjson = client.get(url).get_data(as_text=True)
    # Then they get every event and the end, as the live client did
    assert sse(late_sse) == sse(live_sse)
    assert ids(sse(late_sse)) == [0, 1, 2, 3]
    assert ndjson(late_ndjson) == ndjson(live_ndjson)
    assert [line.get("progress") for line in ndjson(late_ndjson)] == [*PROGRESS, None]


# -- live, over real HTTP ----------------------------------------------------------------------


def lines_until_end(stream: httpx.Response) -> Iterator[str]:
    """The non-empty lines of a streamed response, failing past ``DEADLINE``."""
    deadline = time.monotonic() + DEADLINE
    for line in stream.iter_lines():
        assert time.monotonic() < deadline, "the stream did not end in time"
        if line.strip():
            yield line


def sse_messages(stream: httpx.Response) -> Iterator[dict[str, Any]]:
    """The server-sent events of a streamed response as each one completes."""
    deadline = time.monotonic() + DEADLINE
    buffer = ""
    for chunk in stream.iter_text():
        assert time.monotonic() < deadline, "the stream did not end in time"
        buffer += chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            yield from sse(block + "\n\n")


def test_first_event_reaches_the_client_while_the_workflow_runs(
    client: FlaskClient, live_server: str
) -> None:
    """LlamaDeploy #308: events arrive as they happen, not all at once at the end."""
    # Given a workflow that streams an event, pauses 1.5 s, streams another and ends
    deployed(client, PAUSE)
    with httpx.Client(base_url=live_server, timeout=DEADLINE) as http:
        created = http.post("/deployments/Pause/tasks/create", json={"input": '{"seconds": 1.5}'})
        task = created.json()
        task_url = f"/deployments/Pause/tasks/{task['task_id']}"
        # When a client follows its NDJSON stream
        received: list[tuple[float, dict[str, Any]]] = []
        status_at_first = None
        with http.stream("GET", f"{task_url}/events") as stream:
            assert stream.status_code == 200
            for line in lines_until_end(stream):
                received.append((time.monotonic(), json.loads(line)))
                if len(received) == 1:
                    status_at_first = http.get(task_url).json()["status"]
        ended = time.monotonic()
        final = http.get(task_url).json()
    # Then the first event came while the task was still running, well before the end
    assert [event for _, event in received] == [
        {"text": "before"},
        {"text": "after"},
        {"result": "paused 1.5s"},
    ]
    assert status_at_first == "running"
    first_at = received[0][0]
    assert ended - first_at > 1.0, f"first event only {ended - first_at:.2f} s before the end"
    assert received[1][0] - first_at > 1.0
    assert final["status"] == "succeeded"


def test_sse_resumed_mid_run_has_no_gap_and_no_duplicate(
    client: FlaskClient, live_server: str
) -> None:
    # Given a running task whose stream a client left after the first event
    deployed(client, PAUSE)
    with httpx.Client(base_url=live_server, timeout=DEADLINE) as http:
        task = http.post("/deployments/Pause/tasks/create", json={"input": '{"seconds": 1}'})
        url = f"/deployments/Pause/tasks/{task.json()['task_id']}/events"
        with http.stream("GET", url, headers=SSE) as stream:
            seen = [next(sse_messages(stream))]
        status_when_left = http.get(url.removesuffix("/events")).json()["status"]
        # When it comes back with the id of the last event it saw
        resume = {**SSE, "Last-Event-ID": seen[-1]["id"]}
        with http.stream("GET", url, headers=resume) as stream:
            rest = list(sse_messages(stream))
    # Then it had left while the task ran, and got exactly the events after it, then the end
    assert status_when_left == "running"
    assert ids(seen) == [0]
    assert ids(seen + rest) == [0, 1, 2]
    assert [m["event"] for m in seen + rest] == ["Note", "Note", "StopEvent", "end"]
    assert [m["data"]["data"] for m in seen + rest[:-1]] == [
        {"text": "before"},
        {"text": "after"},
        {"result": "paused 1s"},
    ]
    assert rest[-1]["data"]["status"] == "succeeded"
