"""Hostile input never hurts the server (issue 14, item 5): nesting, sizes and integers out
of bounds get a 4xx in the one error shape, with the field and the reason, and change nothing
(no task, no event, no deployment)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from kombu.transport import memory

from app.server import Server
from config.settings import Settings
from tests.app.conftest import (
    SLEEPY,
    all_tasks,
    assert_error,
    deployed,
    field_errors,
    ok,
    wait_for_task,
)
from tests.config.test_reading import billion_laughs
from tests.conftest import HITL, QUICKSTART

DEEP = "[" * 100_000 + "]" * 100_000
HUGE = 2**70
NESTED = "nested deeper than 100 levels of arrays and objects"


@pytest.fixture
def small(settings: Settings) -> Iterator[FlaskClient]:
    """A server with small bounds, where a few kilobytes are too many."""
    srv = Server(
        settings.replace(
            max_input_bytes=1_000,
            max_event_bytes=500,
            max_result_bytes=500,
            max_yaml_bytes=4_000,
        )
    )
    srv.start_workers()
    try:
        yield srv.app.test_client()
    finally:
        srv.close()
        memory.Channel.queues.clear()


def post_json(client: FlaskClient, url: str, text: str) -> Any:
    return client.post(url, data=text, content_type="application/json")


# -- nesting -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/deployments/QuickStart/tasks/create",
        "/deployments/QuickStart/tasks/run",
        "/deployments/QuickStart/workflows/echo_workflow/run",
        "/deployments/QuickStart/workflows/echo_workflow/run-nowait",
    ],
)
def test_a_body_nested_100_000_deep_is_refused(client: FlaskClient, url: str) -> None:
    deployed(client, QUICKSTART)
    body = assert_error(post_json(client, url, '{"input": ' + DEEP + "}"), 422)
    assert body["message"] == "the JSON body is nested too deeply"
    assert body["errors"] == {"json": {"_schema": [f"{NESTED} (CELERIAC_MAX_NESTING)"]}}
    assert all_tasks(client) == []


def test_task_input_nested_too_deeply_in_a_json_string_is_refused(client: FlaskClient) -> None:
    deployed(client, QUICKSTART)
    for deep in (DEEP, "[" * 101 + "]" * 101):
        url = "/deployments/QuickStart/tasks/create"
        body = assert_error(client.post(url, json={"input": deep}), 422)
        assert body["message"] == "task input is nested too deeply"
        assert field_errors(body) == {"input": [NESTED]}
    assert all_tasks(client) == []


def test_an_event_nested_too_deeply_is_refused(server: Server, client: FlaskClient) -> None:
    deployed(client, HITL)
    task = ok(client.post("/deployments/HumanInTheLoop/tasks/create", json={}))
    url = f"/deployments/HumanInTheLoop/tasks/{task['task_id']}/events"
    event = '{"qualified_name": "HumanResponseEvent", "value": {"response": ' + DEEP + "}}"
    # As a JSON string in LlamaDeploy's body
    body = assert_error(client.post(url, json={"event_obj_str": event}), 422)
    assert field_errors(body) == {"event_obj_str": [NESTED]}
    # And as the body itself, on the workflow server's route
    ws = f"/deployments/HumanInTheLoop/events/{task['task_id']}"
    assert_error(post_json(client, ws, '{"event": ' + DEEP + "}"), 422)
    body = assert_error(client.post(ws, json={"event": event}), 422)
    assert field_errors(body) == {"event": [NESTED]}
    answer = '{"qualified_name": "HumanResponseEvent", "value": {"response": "flat"}}'
    ok(client.post(url, json={"event_obj_str": answer}))
    assert wait_for_task(client, "HumanInTheLoop", task["task_id"])["result"] == "flat"


# -- sizes -------------------------------------------------------------------------------------


def test_task_input_over_its_bound_is_413(small: FlaskClient) -> None:
    deployed(small, QUICKSTART)
    big = json.dumps({"message": "x" * 2_000})
    for route in ("create", "run"):
        body = assert_error(
            small.post(f"/deployments/QuickStart/tasks/{route}", json={"input": big}), 413
        )
        assert body["message"] == "task input is too large"
        assert field_errors(body) == {
            "input": ["2,014 bytes of JSON; at most 1,000 (CELERIAC_MAX_INPUT_BYTES)"]
        }
    run = "/deployments/QuickStart/workflows/echo_workflow/run-nowait"
    body = assert_error(small.post(run, json={"start_event": {"message": "x" * 2_000}}), 413)
    assert list(field_errors(body)) == ["input"]
    assert all_tasks(small) == []


def test_an_event_over_its_bound_is_413(small: FlaskClient) -> None:
    deployed(small, HITL)
    task = ok(small.post("/deployments/HumanInTheLoop/tasks/create", json={}))
    url = f"/deployments/HumanInTheLoop/tasks/{task['task_id']}/events"
    big = json.dumps({"qualified_name": "HumanResponseEvent", "value": {"response": "x" * 600}})
    body = assert_error(small.post(url, json={"event_obj_str": big}), 413)
    assert body["message"] == "the event is too large"
    assert field_errors(body) == {
        "event_obj_str": [f"{len(big):,} bytes; at most 500 (CELERIAC_MAX_EVENT_BYTES)"]
    }
    ws = f"/deployments/HumanInTheLoop/events/{task['task_id']}"
    envelope = {"type": "HumanResponseEvent", "value": {"response": "x" * 600}}
    assert list(field_errors(assert_error(small.post(ws, json={"event": envelope}), 413))) == [
        "event"
    ]
    answer = json.dumps({"qualified_name": "HumanResponseEvent", "value": {"response": "ok"}})
    ok(small.post(url, json={"event_obj_str": answer}))
    assert wait_for_task(small, "HumanInTheLoop", task["task_id"])["result"] == "ok"


def test_a_body_over_the_servers_bound_is_413_in_the_error_shape(small: FlaskClient) -> None:
    deployed(small, QUICKSTART)
    # The largest payload bound is 4,000 bytes: bodies up to 2 x 4,000 + 64 KiB are read
    too_big = json.dumps({"input": "x" * 80_000})
    body = assert_error(post_json(small, "/deployments/QuickStart/tasks/create", too_big), 413)
    assert body["message"] == "the request body is larger than the 73,536 bytes this server reads"
    assert all_tasks(small) == []


def test_a_result_over_its_bound_fails_the_task_with_the_reason(small: FlaskClient) -> None:
    deployed(small, QUICKSTART)
    # The echo answers "Message received: " and its message: 100 characters fit in 500 bytes
    url = "/deployments/QuickStart/tasks/run"
    assert ok(small.post(url, json={"input": {"message": "x" * 100}})).endswith("x" * 100)
    # When the answer would be 920 bytes of JSON
    body = assert_error(small.post(url, json={"input": {"message": "y" * 900}}), 502)
    # Then the task failed, saying why, and stored no result
    done = wait_for_task(small, "QuickStart", body["errors"]["task_id"])
    assert (done["status"], done["result"]) == ("failed", None)
    assert done["error"] == {
        "type": "workers.errors.ResultTooLarge",
        "message": "the workflow's result is 920 bytes of JSON; results may have at most "
        "500 (CELERIAC_MAX_RESULT_BYTES)",
    }
    # And its streamed StopEvent, which would carry the result, carries why it does not
    events = small.get(f"/deployments/QuickStart/tasks/{done['task_id']}/events")
    assert [json.loads(line) for line in events.get_data(as_text=True).splitlines()] == [
        {
            "celeriac_omitted": "the data of streamed event StopEvent is 931 bytes of JSON; "
            "streamed events may have at most 500 (CELERIAC_MAX_RESULT_BYTES)"
        }
    ]


# -- integers ----------------------------------------------------------------------------------


@pytest.fixture
def one_task(client: FlaskClient) -> str:
    deployed(client, QUICKSTART)
    task = ok(client.post("/deployments/QuickStart/tasks/create", json={}))
    wait_for_task(client, "QuickStart", task["task_id"])
    return str(task["task_id"])


@pytest.mark.parametrize("value", [HUGE, -HUGE, -2])
@pytest.mark.parametrize(
    ("where", "name"),
    [
        ("tasks", "offset"),
        ("tasks", "limit"),
        ("tasks/{id}/events", "last_event_id"),
        ("events/{id}", "after_sequence"),
    ],
)
def test_integers_out_of_range_in_queries_are_422(
    client: FlaskClient, one_task: str, where: str, name: str, value: int
) -> None:
    if value == -2 and name in {"offset", "limit"}:
        value = -1
    url = f"/deployments/QuickStart/{where.format(id=one_task)}"
    body = assert_error(client.get(url, query_string={name: str(value)}), 422)
    assert list(field_errors(body)) == [name]
    assert body["message"] == f"invalid request: {name}"


@pytest.mark.parametrize("value", [str(HUGE), "-5", "9" * 5_000, "1e3"])
@pytest.mark.parametrize(
    ("where", "accept"),
    [
        ("tasks/{id}/events", "text/event-stream"),
        ("tasks/{id}/events", "application/x-ndjson"),
        ("events/{id}", "text/event-stream"),
    ],
)
def test_last_event_id_out_of_range_is_422(
    client: FlaskClient, one_task: str, where: str, accept: str, value: str
) -> None:
    url = f"/deployments/QuickStart/{where.format(id=one_task)}"
    response = client.get(url, headers={"Accept": accept, "Last-Event-ID": value})
    body = assert_error(response, 422)
    assert body["message"] == "Last-Event-ID must be an event id from this stream"
    assert list(body["errors"]) == ["Last-Event-ID"]


@pytest.mark.parametrize("value", [str(HUGE), "-1", "0", "nan", "inf", "1e400"])
@pytest.mark.parametrize(
    "url",
    [
        "/deployments/Sleepy/tasks/run",
        "/deployments/Sleepy/workflows/sleepy/run",
    ],
)
def test_run_timeouts_out_of_range_are_422_and_run_nothing(
    client: FlaskClient, url: str, value: str
) -> None:
    deployed(client, SLEEPY)
    body = assert_error(client.post(url, query_string={"timeout": value}, json={}), 422)
    assert list(field_errors(body)) == ["timeout"]
    assert all_tasks(client) == []


def test_edges_of_the_ranges_are_taken(client: FlaskClient, one_task: str) -> None:
    tasks = "/deployments/QuickStart/tasks"
    assert ok(client.get(tasks, query_string={"offset": str(2**31 - 1)})) == []
    sse = client.get(
        f"{tasks}/{one_task}/events",
        headers={"Accept": "text/event-stream", "Last-Event-ID": str(2**31 - 1)},
    )
    assert sse.status_code == 200
    assert "event: end" in sse.get_data(as_text=True)


# -- YAML --------------------------------------------------------------------------------------


def upload(client: FlaskClient, text: str) -> Any:
    return client.post(
        "/deployments/create",
        data={"config_file": (io.BytesIO(text.encode()), "deployment.yml")},
        content_type="multipart/form-data",
    )


def test_a_billion_laughs_upload_is_refused_at_once(client: FlaskClient) -> None:
    started = time.perf_counter()
    body = assert_error(upload(client, billion_laughs()), 422)
    took = time.perf_counter() - started
    assert field_errors(body) == {
        "yaml": [
            "Refused: the file holds more than 10,000 values once its aliases are expanded "
            "(CELERIAC_MAX_YAML_NODES)."
        ]
    }
    assert took < 1.0, took
    assert ok(client.get("/deployments/")) == []
    assert ok(client.get("/status/"))["status"] == "Healthy"


def test_yaml_nested_too_deeply_or_too_large_is_refused(small: FlaskClient) -> None:
    body = assert_error(upload(small, "[" * 2_500 + "]" * 2_500), 413)
    assert body["message"] == "the deployment file is too large"
    assert field_errors(body) == {
        "config_file": ["5,000 bytes; at most 4,000 (CELERIAC_MAX_YAML_BYTES)"]
    }
    body = assert_error(upload(small, "[" * 100_000 + "]" * 100_000), 413)
    assert body["message"].startswith("the request body is larger than")
    deep = "a: " + "[" * 1_000 + "]" * 1_000
    body = assert_error(upload(small, deep), 422)
    assert field_errors(body) == {"yaml": [f"Refused: {NESTED}."]}
    assert ok(small.get("/deployments/")) == []
