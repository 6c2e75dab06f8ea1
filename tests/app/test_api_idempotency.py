"""``Idempotency-Key`` on ``tasks/create`` and ``tasks/run``: the same request again under a key
gets the same task, replayed; another request under it gets 409; a bad key gets 422; a key
is free again once it expired."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from kombu.transport import memory
from sqlalchemy import select
from werkzeug.test import TestResponse

from app.models import IdempotencyKey
from app.models.base import table_of
from app.server import Server
from config.settings import Settings
from tests.app.conftest import (
    FAILING,
    SLEEPY,
    all_tasks,
    assert_error,
    deployed,
    field_errors,
    ok,
    wait_for_task,
    write_echo_deployment,
)
from tests.conftest import QUICKSTART

#: Every test here ends with all its tasks ended: a task never stays queued.
pytestmark = pytest.mark.usefixtures("no_task_left_behind")

RUN = "/deployments/QuickStart/tasks/run"
CREATE = "/deployments/QuickStart/tasks/create"
KEY = "order-42"
_KEYS = table_of(IdempotencyKey)


@pytest.fixture
def quickstart(client: FlaskClient) -> FlaskClient:
    """The client, with the quick start deployed."""
    deployed(client, QUICKSTART)
    return client


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


def stored_keys(server: Server) -> list[tuple[str, str]]:
    """Every key stored, with the task it names."""
    with server.plane.db.peek() as conn:
        return sorted((row.key, row.task_id) for row in conn.execute(select(_KEYS)))


def replayed(response: TestResponse) -> str | None:
    return response.headers.get("Idempotent-Replayed")


# -- tasks/create --------------------------------------------------------------------------------


def test_the_same_create_twice_under_a_key_is_one_task_replayed(
    quickstart: FlaskClient, server: Server
) -> None:
    # Given a task created under a key
    first = quickstart.post(CREATE, json={"input": '{"message": "hi"}'}, headers=keyed(KEY))
    task = ok(first)
    assert replayed(first) is None
    # When the same request comes again (its input as an object now, the same kwargs)
    again = quickstart.post(CREATE, json={"input": {"message": "hi"}}, headers=keyed(KEY))
    # Then it answers with the same task, marked as replayed, and only one task is stored
    assert ok(again)["task_id"] == task["task_id"]
    assert ok(again)["session_id"] == task["session_id"]
    assert replayed(again) == "true"
    assert [t["task_id"] for t in all_tasks(quickstart)] == [task["task_id"]]
    assert [s["session_id"] for s in ok(quickstart.get("/deployments/QuickStart/sessions"))] == [
        task["session_id"]
    ]
    assert stored_keys(server) == [(KEY, task["task_id"])]
    # And it is the task as it is now: once it ended, a replay shows its result
    wait_for_task(quickstart, "QuickStart", task["task_id"])
    later = ok(quickstart.post(CREATE, json={"input": {"message": "hi"}}, headers=keyed(KEY)))
    assert (later["task_id"], later["status"]) == (task["task_id"], "succeeded")


def test_another_request_under_a_used_key_is_409_and_stores_nothing(
    quickstart: FlaskClient, server: Server
) -> None:
    task = ok(quickstart.post(CREATE, json={"input": {"message": "hi"}}, headers=keyed(KEY)))
    # Each of these differs from the first request in one thing: input, service, task id,
    # session, or the route
    session = ok(quickstart.post("/deployments/QuickStart/sessions/create"))["session_id"]
    others = [
        (CREATE, {"input": {"message": "bye"}}, {}),
        (CREATE, {"input": {"message": "hi"}, "service_id": "echo_workflow"}, {}),
        (CREATE, {"input": {"message": "hi"}, "task_id": "mine"}, {}),
        (CREATE, {"input": {"message": "hi"}}, {"session_id": session}),
        (RUN, {"input": {"message": "hi"}}, {}),
    ]
    for path, body, query in others:
        response = quickstart.post(path, json=body, query_string=query, headers=keyed(KEY))
        error = assert_error(response, 409)
        assert error["message"] == (
            f"Idempotency-Key '{KEY}' was used with a different request in the last 86400 s; "
            "nothing was stored. Send a new request under a new key"
        ), (path, body, query)
        assert error["errors"] == {
            "Idempotency-Key": [
                "used with a different request (route, input, service_id, task_id or session_id)"
            ]
        }
        assert replayed(response) is None
    # And nothing was stored: one task, in its own session, one key
    assert [t["task_id"] for t in all_tasks(quickstart)] == [task["task_id"]]
    sessions = ok(quickstart.get("/deployments/QuickStart/sessions"))
    assert sorted(s["session_id"] for s in sessions) == sorted([task["session_id"], session])
    assert stored_keys(server) == [(KEY, task["task_id"])]


def test_the_timeout_and_the_multitask_strategy_are_not_part_of_the_request(
    quickstart: FlaskClient,
) -> None:
    body = {"input": {"message": "hi"}}
    task = ok(quickstart.post(CREATE, json=body, headers=keyed(KEY)))
    query = {"timeout": "3", "multitask_strategy": "reject"}
    again = quickstart.post(CREATE, json=body, query_string=query, headers=keyed(KEY))
    assert (ok(again)["task_id"], replayed(again)) == (task["task_id"], "true")


def test_a_key_is_one_deployments_own(client: FlaskClient, tmp_path: Path) -> None:
    deployed(client, write_echo_deployment(tmp_path / "a", "EchoA", "a:"))
    deployed(client, write_echo_deployment(tmp_path / "b", "EchoB", "b:"))
    body = {"input": {"data": "x"}}
    a = ok(client.post("/deployments/EchoA/tasks/run", json=body, headers=keyed(KEY)))
    b = ok(client.post("/deployments/EchoB/tasks/run", json=body, headers=keyed(KEY)))
    assert (a, b) == ("a:x", "b:x")
    assert len(all_tasks(client)) == 2


@pytest.mark.parametrize(
    ("key", "reasons"),
    [
        (
            "",
            [
                "must be 1 to 255 characters long",
                "must be printable ASCII characters, with no space at either end",
            ],
        ),
        ("k" * 256, ["must be 1 to 255 characters long"]),
        ("clé", ["must be printable ASCII characters, with no space at either end"]),
        ("tab\there", ["must be printable ASCII characters, with no space at either end"]),
    ],
)
@pytest.mark.parametrize("path", [CREATE, RUN])
def test_a_bad_key_is_422_naming_the_header_and_stores_nothing(
    quickstart: FlaskClient, server: Server, path: str, key: str, reasons: list[str]
) -> None:
    response = quickstart.post(path, json={"input": {"message": "hi"}}, headers=keyed(key))
    error = assert_error(response, 422)
    assert error["message"] == "invalid request: Idempotency-Key"
    assert field_errors(error) == {"Idempotency-Key": reasons}
    assert all_tasks(quickstart) == []
    assert stored_keys(server) == []


def test_the_longest_and_odd_keys_are_taken(quickstart: FlaskClient, server: Server) -> None:
    keys = ["k" * 255, "a b", "!~", "x"]
    for key in keys:
        ok(quickstart.post(CREATE, json={"input": {"message": key}}, headers=keyed(key)))
    assert sorted(k for k, _ in stored_keys(server)) == sorted(keys)


def test_a_request_without_a_key_stores_none(quickstart: FlaskClient, server: Server) -> None:
    for _ in range(2):
        ok(quickstart.post(CREATE, json={"input": {"message": "hi"}}))
        ok(quickstart.post(RUN, json={"input": {"message": "hi"}}))
    assert len(all_tasks(quickstart)) == 4
    assert stored_keys(server) == []


# -- tasks/run -----------------------------------------------------------------------------------


def test_the_same_run_twice_under_a_key_answers_the_first_runs_result(
    quickstart: FlaskClient, server: Server
) -> None:
    first = quickstart.post(RUN, json={"input": {"message": "once"}}, headers=keyed(KEY))
    assert (ok(first), replayed(first)) == ("Message received: once", None)
    again = quickstart.post(RUN, json={"input": {"message": "once"}}, headers=keyed(KEY))
    assert (ok(again), replayed(again)) == ("Message received: once", "true")
    [task] = all_tasks(quickstart)
    assert (task["status"], task["attempts"]) == ("succeeded", 1)
    assert stored_keys(server) == [(KEY, task["task_id"])]


def test_a_failed_run_replayed_is_the_same_502(client: FlaskClient) -> None:
    deployed(client, FAILING)
    url = "/deployments/Failing/tasks/run"
    first = assert_error(client.post(url, json={}, headers=keyed(KEY)), 502)
    again = client.post(url, json={}, headers=keyed(KEY))
    assert assert_error(again, 502) == first
    assert len(all_tasks(client)) == 1


def test_a_run_replayed_while_the_first_runs_waits_for_its_end(
    client: FlaskClient, server: Server
) -> None:
    # Given a run of half a second in flight, its answer not back yet
    deployed(client, SLEEPY)
    url = "/deployments/Sleepy/tasks/run"
    body = {"input": {"seconds": 0.5}}
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.post, url, json=body, headers=keyed(KEY))
        while not stored_keys(server):
            time.sleep(0.005)
        # When the client sends it again
        sent = time.monotonic()
        again = pool.submit(client.post, url, json=body, headers=keyed(KEY))
        assert [t["status"] for t in all_tasks(client)] in (["queued"], ["running"])
        answers = [first.result(timeout=30), again.result(timeout=30)]
    # Then both answers are the one run's result, and the second is the replay, which waited
    assert [ok(r) for r in answers] == ["slept 0.5s"] * 2
    assert [replayed(r) for r in answers] == [None, "true"]
    assert time.monotonic() - sent > 0.2
    [task] = all_tasks(client)
    assert task["attempts"] == 1


# -- at once, and over time ------------------------------------------------------------------------


def test_eight_clients_sending_one_key_at_once_make_one_task(
    quickstart: FlaskClient, server: Server
) -> None:
    start = threading.Barrier(8)

    def send(_: int) -> TestResponse:
        client = server.app.test_client()
        start.wait(timeout=10)
        return client.post(CREATE, json={"input": {"message": "race"}}, headers=keyed(KEY))

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(8)))
    ids = {ok(r)["task_id"] for r in answers}
    assert len(ids) == 1
    assert sorted(str(replayed(r)) for r in answers) == ["None"] + ["true"] * 7
    assert [t["task_id"] for t in all_tasks(quickstart)] == list(ids)
    assert len(ok(quickstart.get("/deployments/QuickStart/sessions"))) == 1


@pytest.fixture
def short_lived(settings: Settings) -> Iterator[FlaskClient]:
    """A client of a server whose idempotency keys live a fifth of a second."""
    srv = Server(settings.replace(idempotency_ttl=0.2))
    srv.start_workers()
    try:
        client = srv.app.test_client()
        deployed(client, QUICKSTART)
        yield client
    finally:
        srv.close()
        memory.Channel.queues.clear()


def test_an_expired_key_is_free_for_a_new_task(short_lived: FlaskClient) -> None:
    body = {"input": {"message": "hi"}}
    first = ok(short_lived.post(CREATE, json=body, headers=keyed(KEY)))
    time.sleep(0.3)
    # The same request is a new task now, and so is another one, after the key expired again
    again = short_lived.post(CREATE, json=body, headers=keyed(KEY))
    assert ok(again)["task_id"] != first["task_id"]
    assert replayed(again) is None
    time.sleep(0.3)
    other = short_lived.post(RUN, json={"input": {"message": "new"}}, headers=keyed(KEY))
    assert ok(other) == "Message received: new"
    assert len(all_tasks(short_lived)) == 3
    for task in all_tasks(short_lived):
        wait_for_task(short_lived, "QuickStart", task["task_id"])


# -- the document ----------------------------------------------------------------------------------


def test_the_document_declares_the_header_and_the_replay(client: FlaskClient) -> None:
    paths = ok(client.get("/openapi.json"))["paths"]
    for route in ("create", "run"):
        operation = paths[f"/deployments/{{deployment_name}}/tasks/{route}"]["post"]
        [header] = [p for p in operation["parameters"] if p["in"] == "header"]
        assert header["name"] == "Idempotency-Key" and header["required"] is False
        assert header["schema"] == {
            "type": "string",
            "minLength": 1,
            "maxLength": 255,
            "pattern": "^[!-~]([ -~]*[!-~])?$",
        }
        assert "CELERIAC_IDEMPOTENCY_TTL" in header["description"]
        assert set(operation["responses"]["200"]["headers"]) == {"Idempotent-Replayed"}
        assert "Idempotency-Key" in operation["responses"]["409"]["description"]
    assert json.dumps(paths).count('"Idempotency-Key"') == 2
