"""``/deployments/{d}/tasks``: run and create tasks, and read their status, result and errors."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.app.conftest import (
    FAILING,
    SLEEPY,
    STRUCTURED,
    TERMINAL,
    all_tasks,
    assert_error,
    deployed,
    field_errors,
    ok,
    poll,
    wait_for_task,
    write_echo_deployment,
)
from tests.conftest import QUICKSTART, deploy

#: Every test here ends with all its tasks ended: a task never stays queued.
pytestmark = pytest.mark.usefixtures("no_task_left_behind")

RUN = "/deployments/QuickStart/tasks/run"
CREATE = "/deployments/QuickStart/tasks/create"


@pytest.fixture
def quickstart(client: FlaskClient) -> FlaskClient:
    """The client, with the quick start deployed."""
    deployed(client, QUICKSTART)
    return client


def create(client: FlaskClient, deployment: str, **body: Any) -> dict[str, Any]:
    """``tasks/create`` that must succeed; the task it returns."""
    task: dict[str, Any] = ok(client.post(f"/deployments/{deployment}/tasks/create", json=body))
    return task


def timestamp(value: str) -> dt.datetime:
    """An ISO 8601 timestamp that must carry its timezone."""
    parsed = dt.datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


# -- tasks/run ---------------------------------------------------------------------------------


def test_run_takes_input_as_a_json_string(quickstart: FlaskClient) -> None:
    # LlamaDeploy's client sends the run kwargs JSON-encoded in a string
    response = quickstart.post(RUN, json={"input": json.dumps({"message": "hello"})})
    assert ok(response) == "Message received: hello"


def test_run_without_a_session_leaves_no_session_behind(quickstart: FlaskClient) -> None:
    # When a task is run without a session
    assert ok(quickstart.post(RUN, json={"input": '{"message": "alone"}'})) == (
        "Message received: alone"
    )
    # Then it is recorded, in no session, and no session was made for it
    [task] = all_tasks(quickstart)
    assert task["session_id"] is None
    assert task["result"] == "Message received: alone"
    assert ok(quickstart.get(f"/deployments/QuickStart/tasks/{task['task_id']}"))["status"] == (
        "succeeded"
    )
    assert ok(quickstart.get("/deployments/QuickStart/sessions")) == []


def test_run_after_the_deployment_is_made_again_with_other_services(
    client: FlaskClient, project: Path
) -> None:
    # Given the quick start, run once, then deleted and deployed again with its service renamed
    # (SQLite gives the new deployment the deleted one's id, at the same version)
    path = project / "quickstart" / "deployment.yml"
    deployed(client, path)
    assert ok(client.post(RUN, json={"input": '{"message": "one"}'})) == "Message received: one"
    assert client.delete("/deployments/QuickStart").status_code == 204
    path.write_text(
        path.read_text()
        .replace("echo_workflow:\n", "renamed:\n", 1)
        .replace("default-service: echo_workflow", "default-service: renamed")
    )
    deployed(client, path)
    # When a task is run on it
    response = client.post(RUN, query_string={"timeout": "5"}, json={"input": '{"message": "2"}'})
    # Then the new deployment's service runs it
    assert ok(response) == "Message received: 2"
    assert [t["service_id"] for t in all_tasks(client)] == ["renamed"]


def test_run_takes_input_as_an_object(quickstart: FlaskClient) -> None:
    response = quickstart.post(RUN, json={"input": {"message": "object"}})
    assert ok(response) == "Message received: object"


def test_run_without_input_runs_with_no_arguments(quickstart: FlaskClient) -> None:
    assert ok(quickstart.post(RUN, json={})) == "Message received: "


def test_run_with_the_service_named(quickstart: FlaskClient) -> None:
    response = quickstart.post(
        RUN, json={"input": '{"message": "named"}', "service_id": "echo_workflow"}
    )
    assert ok(response) == "Message received: named"
    assert ok(quickstart.get("/deployments/QuickStart/tasks"))[0]["service_id"] == "echo_workflow"


def test_run_without_service_uses_the_default_service(quickstart: FlaskClient) -> None:
    assert ok(quickstart.post(RUN, json={"input": '{"message": "dflt"}'})) == (
        "Message received: dflt"
    )
    assert ok(quickstart.get("/deployments/QuickStart/tasks"))[0]["service_id"] == "echo_workflow"


def test_run_without_service_nor_default_service_is_a_bad_request(
    client: FlaskClient, project: Path
) -> None:
    # Given a deployment without default-service
    path = project / "quickstart" / "deployment.yml"
    path.write_text(path.read_text().replace("default-service: echo_workflow\n", ""))
    assert ok(deploy(client, path))["default_service"] is None
    # When a task names no service, then it is refused and nothing is stored
    body = assert_error(client.post(RUN, json={"input": "{}"}), 400)
    assert "service" in body["message"]
    assert_error(client.post(CREATE, json={"input": "{}"}), 400)
    assert ok(client.get("/deployments/QuickStart/tasks")) == []
    # While a task that names it runs
    named = client.post(RUN, json={"input": '{"message": "x"}', "service_id": "echo_workflow"})
    assert ok(named) == "Message received: x"


def test_run_on_an_unknown_service_is_not_found(quickstart: FlaskClient) -> None:
    body = assert_error(quickstart.post(RUN, json={"input": "{}", "service_id": "nope"}), 404)
    assert "nope" in body["message"]
    assert ok(quickstart.get("/deployments/QuickStart/tasks")) == []


def test_input_that_is_not_json_is_refused(quickstart: FlaskClient) -> None:
    body = assert_error(quickstart.post(RUN, json={"input": "{message: hello"}), 422)
    assert "input" in body["errors"]
    assert ok(quickstart.get("/deployments/QuickStart/tasks")) == []


@pytest.mark.parametrize("value", ['["a", "b"]', "42", '"text"', "null", ["a", "b"], 42], ids=repr)
def test_input_that_is_not_an_object_is_refused(quickstart: FlaskClient, value: Any) -> None:
    body = assert_error(quickstart.post(RUN, json={"input": value}), 422)
    assert "input" in body["errors"]
    assert ok(quickstart.get("/deployments/QuickStart/tasks")) == []


def test_body_that_is_not_json_is_refused(quickstart: FlaskClient) -> None:
    response = quickstart.post(RUN, data="input=hello", content_type="application/json")
    assert 400 <= response.status_code < 500
    assert_error(response, response.status_code)
    assert ok(quickstart.get("/deployments/QuickStart/tasks")) == []


def test_failing_workflow_is_a_bad_gateway_with_the_error(client: FlaskClient) -> None:
    # Given a workflow that raises ValueError("boom")
    deployed(client, FAILING)
    # When it runs
    body = assert_error(client.post("/deployments/Failing/tasks/run", json={"input": "{}"}), 502)
    # Then the answer carries the task id and the error
    assert body["errors"]["error"]["message"] == "boom"
    assert "boom" in body["message"]
    task_id = body["errors"]["task_id"]
    # And the task is stored as failed, with the type, message and end time of the error
    # (its traceback is the server's: no caller sees it, see tests/app/test_hostile_input.py)
    task = ok(client.get(f"/deployments/Failing/tasks/{task_id}"))
    assert task["status"] == "failed"
    assert task["result"] is None
    assert task["error"]["type"].endswith("ValueError")
    assert task["error"]["message"] == "boom"
    assert "traceback" not in task["error"]
    assert timestamp(task["finished_at"]) >= timestamp(task["created_at"])
    assert task["attempts"] == 1


def test_run_longer_than_timeout_is_a_gateway_timeout(client: FlaskClient) -> None:
    # Given a workflow that sleeps longer than the client waits
    deployed(client, SLEEPY)
    # When it runs with a short timeout
    response = client.post(
        "/deployments/Sleepy/tasks/run",
        query_string={"timeout": 0.1},
        json={"input": '{"seconds": 0.4}'},
    )
    # Then the answer is a 504 naming the task
    body = assert_error(response, 504)
    task_id = body["errors"]["task_id"]
    assert body["errors"]["status"] in {"queued", "running"}
    # And the task keeps running to its end
    task = wait_for_task(client, "Sleepy", task_id)
    assert task["status"] == "succeeded"
    assert task["result"] == "slept 0.4s"


BROKEN_CODE = {
    # mistake: (workflow.py, words the task's error must contain)
    "syntax error": ("def broken(:\n", "SyntaxError"),
    "import error": ("import no_such_module_celeriac\n", "no_such_module_celeriac"),
    "missing attribute": ("other = 1\n", "echo_workflow"),
    "not a workflow": ("echo_workflow = 'a string'\n", "not a workflows.Workflow"),
}


@pytest.mark.parametrize("mistake", BROKEN_CODE)
def test_workflow_that_cannot_load_fails_the_task_not_the_server(
    client: FlaskClient, tmp_path: Path, mistake: str
) -> None:
    # Given a deployment whose workflow module exists but cannot give a workflow
    code, words = BROKEN_CODE[mistake]
    path = write_echo_deployment(tmp_path, "Broken", "unused")
    (tmp_path / "src" / "workflow.py").write_text(code)
    deployed(client, path)
    # When a task runs, then it fails with a message that says why
    body = assert_error(client.post("/deployments/Broken/tasks/run", json={"input": "{}"}), 502)
    assert words in body["errors"]["error"]["message"]
    task = ok(client.get(f"/deployments/Broken/tasks/{body['errors']['task_id']}"))
    assert task["status"] == "failed"
    assert words in task["error"]["message"]
    # And the server still runs other deployments
    deployed(client, QUICKSTART)
    assert ok(client.post(RUN, json={"input": '{"message": "ok"}'})) == "Message received: ok"


@pytest.mark.parametrize("timeout", ["0", "-1", "soon", "100000"])
def test_bad_timeout_is_refused(quickstart: FlaskClient, timeout: str) -> None:
    response = quickstart.post(RUN, query_string={"timeout": timeout}, json={"input": "{}"})
    body = assert_error(response, 422)
    assert "timeout" in field_errors(body)
    assert ok(quickstart.get("/deployments/QuickStart/tasks")) == []


def test_dict_result_is_an_object_from_run_and_a_string_in_task_result(
    client: FlaskClient,
) -> None:
    deployed(client, STRUCTURED)
    expected = {"message": "hi", "length": 2, "nested": {"ok": True}}
    # When the workflow returns a dict, tasks/run answers with the JSON object
    result = ok(
        client.post("/deployments/Structured/tasks/run", json={"input": '{"message": "hi"}'})
    )
    assert result == expected
    # The task keeps the object; LlamaDeploy's TaskResult has it as a JSON string
    (task,) = ok(client.get("/deployments/Structured/tasks"))
    assert task["result"] == expected
    task_result = ok(client.get(f"/deployments/Structured/tasks/{task['task_id']}/results"))
    assert isinstance(task_result["result"], str)
    assert json.loads(task_result["result"]) == expected


# -- tasks/create ------------------------------------------------------------------------------


def test_create_returns_the_task_definition(quickstart: FlaskClient) -> None:
    task = create(quickstart, "QuickStart", input='{"message": "later"}')
    # LlamaDeploy's TaskDefinition fields, filled
    assert task["task_id"]
    assert task["session_id"]
    assert task["service_id"] == "echo_workflow"
    assert isinstance(task["input"], str)
    assert json.loads(task["input"]) == {"message": "later"}
    assert task["status"] in {"queued", "running", "succeeded"}
    done = wait_for_task(quickstart, "QuickStart", task["task_id"])
    assert done["result"] == "Message received: later"


def test_create_with_object_input_returns_it_as_a_json_string(quickstart: FlaskClient) -> None:
    task = create(quickstart, "QuickStart", input={"message": "obj", "n": 1})
    assert json.loads(task["input"]) == {"message": "obj", "n": 1}


def test_create_uses_the_client_chosen_task_id(quickstart: FlaskClient) -> None:
    task = create(quickstart, "QuickStart", input="{}", task_id="my-own-id")
    assert task["task_id"] == "my-own-id"
    assert wait_for_task(quickstart, "QuickStart", "my-own-id")["status"] == "succeeded"


def test_reusing_a_task_id_is_a_conflict(quickstart: FlaskClient) -> None:
    # Given a task with a chosen id
    create(quickstart, "QuickStart", input='{"message": "first"}', task_id="same-id")
    # When the id is used again
    body = assert_error(quickstart.post(CREATE, json={"input": "{}", "task_id": "same-id"}), 409)
    # Then it is refused, and the first task is untouched
    assert "same-id" in body["message"]
    task = wait_for_task(quickstart, "QuickStart", "same-id")
    assert task["result"] == "Message received: first"
    assert len(ok(quickstart.get("/deployments/QuickStart/tasks"))) == 1


def test_task_id_longer_than_allowed_is_refused(quickstart: FlaskClient) -> None:
    body = assert_error(quickstart.post(CREATE, json={"input": "{}", "task_id": "x" * 65}), 422)
    assert "task_id" in field_errors(body)


def test_create_in_an_unknown_session_is_not_found(quickstart: FlaskClient) -> None:
    body = assert_error(quickstart.post(CREATE, json={"input": "{}", "session_id": "nope"}), 404)
    assert "nope" in body["message"]
    query = quickstart.post(CREATE, query_string={"session_id": "nope"}, json={"input": "{}"})
    assert_error(query, 404)
    assert ok(quickstart.get("/deployments/QuickStart/tasks")) == []


def test_run_in_an_unknown_session_is_not_found(quickstart: FlaskClient) -> None:
    response = quickstart.post(RUN, query_string={"session_id": "nope"}, json={"input": "{}"})
    assert_error(response, 404)
    assert ok(quickstart.get("/deployments/QuickStart/tasks")) == []


# -- unknown deployment ------------------------------------------------------------------------

ROUTES = [
    ("post", "/deployments/Nope/tasks/run", {"json": {"input": "{}"}}),
    ("post", "/deployments/Nope/tasks/create", {"json": {"input": "{}"}}),
    ("get", "/deployments/Nope/tasks", {}),
    ("get", "/deployments/Nope/tasks/some-task", {}),
    ("get", "/deployments/Nope/tasks/some-task/results", {}),
    ("get", "/deployments/Nope/sessions", {}),
    ("post", "/deployments/Nope/sessions/create", {}),
    ("post", "/deployments/Nope/sessions/delete", {"query_string": {"session_id": "s"}}),
    ("get", "/deployments/Nope/sessions/some-session", {}),
    ("delete", "/deployments/Nope/sessions/some-session", {}),
]


@pytest.mark.parametrize(
    ("method", "url", "kwargs"), ROUTES, ids=[f"{m} {u}" for m, u, _ in ROUTES]
)
def test_unknown_deployment_is_not_found_on_every_route(
    quickstart: FlaskClient, method: str, url: str, kwargs: dict[str, Any]
) -> None:
    body = assert_error(getattr(quickstart, method)(url, **kwargs), 404)
    assert "Nope" in body["message"]


# -- reading tasks -----------------------------------------------------------------------------


def test_list_is_oldest_first_and_pages(quickstart: FlaskClient) -> None:
    # Given five tasks created in order
    ids = [create(quickstart, "QuickStart", input={"message": str(i)})["task_id"] for i in range(5)]
    # Then the list gives them oldest first, a page at a time
    listed = ok(quickstart.get("/deployments/QuickStart/tasks"))
    assert [t["task_id"] for t in listed] == ids
    page = ok(quickstart.get("/deployments/QuickStart/tasks?limit=2&offset=1"))
    assert [t["task_id"] for t in page] == ids[1:3]
    tail = ok(quickstart.get("/deployments/QuickStart/tasks?limit=10&offset=4"))
    assert [t["task_id"] for t in tail] == ids[4:]
    assert ok(quickstart.get("/deployments/QuickStart/tasks?offset=5")) == []


@pytest.mark.parametrize("query", ["limit=0", "limit=5000", "limit=ten", "offset=-1"])
def test_bad_page_arguments_are_refused(quickstart: FlaskClient, query: str) -> None:
    body = assert_error(quickstart.get(f"/deployments/QuickStart/tasks?{query}"), 422)
    assert query.split("=")[0] in field_errors(body)


def test_list_filters_by_session(quickstart: FlaskClient) -> None:
    # Given two tasks in one session and one outside it
    session = ok(quickstart.post("/deployments/QuickStart/sessions/create"))["session_id"]
    inside = [
        create(quickstart, "QuickStart", input="{}", session_id=session)["task_id"]
        for _ in range(2)
    ]
    outside = create(quickstart, "QuickStart", input="{}")["task_id"]
    # Then the session filter lists only its tasks
    listed = ok(quickstart.get(f"/deployments/QuickStart/tasks?session_id={session}"))
    assert [t["task_id"] for t in listed] == inside
    assert all(t["session_id"] == session for t in listed)
    every = [t["task_id"] for t in ok(quickstart.get("/deployments/QuickStart/tasks"))]
    assert every == [*inside, outside]


def test_tasks_of_one_deployment_are_not_listed_in_another(quickstart: FlaskClient) -> None:
    deployed(quickstart, STRUCTURED)
    task = create(quickstart, "QuickStart", input="{}")
    assert ok(quickstart.get("/deployments/Structured/tasks")) == []
    assert_error(quickstart.get(f"/deployments/Structured/tasks/{task['task_id']}"), 404)


def test_get_task_shows_status_result_attempts_and_times(quickstart: FlaskClient) -> None:
    task = create(quickstart, "QuickStart", input='{"message": "timed"}')
    done = wait_for_task(quickstart, "QuickStart", task["task_id"])
    assert done["task_id"] == task["task_id"]
    assert done["session_id"] == task["session_id"]
    assert done["service_id"] == "echo_workflow"
    assert json.loads(done["input"]) == {"message": "timed"}
    assert done["status"] == "succeeded"
    assert done["result"] == "Message received: timed"
    assert done["error"] is None
    assert done["attempts"] == 1
    created, started, finished = (
        timestamp(done[k]) for k in ("created_at", "started_at", "finished_at")
    )
    assert created <= started <= finished
    # And its one run, on the embedded server's worker, alone and in the task
    [attempt] = ok(quickstart.get(f"/deployments/QuickStart/tasks/{task['task_id']}/attempts"))
    assert done["attempt_history"] == [attempt]
    assert (attempt["attempt"], attempt["outcome"], attempt["error"]) == (1, "succeeded", None)
    assert attempt["worker"]
    assert timestamp(attempt["started_at"]) == started
    assert timestamp(attempt["finished_at"]) == finished


def test_a_failed_run_shows_its_error_in_its_attempt(quickstart: FlaskClient) -> None:
    deployed(quickstart, FAILING)
    task = create(quickstart, "Failing", input="{}")
    done = wait_for_task(quickstart, "Failing", task["task_id"])
    [attempt] = done["attempt_history"]
    assert (attempt["attempt"], attempt["outcome"]) == (1, "failed")
    assert attempt["error"] == done["error"] and attempt["error"]["message"]


def test_attempts_of_an_unknown_task_are_not_found(quickstart: FlaskClient) -> None:
    assert_error(quickstart.get("/deployments/QuickStart/tasks/nope/attempts"), 404)


def test_get_unknown_task_is_not_found(quickstart: FlaskClient) -> None:
    body = assert_error(quickstart.get("/deployments/QuickStart/tasks/nope"), 404)
    assert "nope" in body["message"]
    assert_error(quickstart.get("/deployments/QuickStart/tasks/nope/results"), 404)


def test_get_task_in_the_wrong_session_is_not_found(quickstart: FlaskClient) -> None:
    task = create(quickstart, "QuickStart", input="{}")
    other = ok(quickstart.post("/deployments/QuickStart/sessions/create"))["session_id"]
    url = f"/deployments/QuickStart/tasks/{task['task_id']}"
    assert_error(quickstart.get(url, query_string={"session_id": other}), 404)
    mine = ok(quickstart.get(url, query_string={"session_id": task["session_id"]}))
    assert mine["task_id"] == task["task_id"]


# -- tasks/{id}/results ------------------------------------------------------------------------


def test_results_are_null_while_running_then_the_task_result(client: FlaskClient) -> None:
    # Given a task that sleeps a little
    deployed(client, SLEEPY)
    task = create(client, "Sleepy", input='{"seconds": 0.2}')
    url = f"/deployments/Sleepy/tasks/{task['task_id']}/results"
    query = {"session_id": task["session_id"]}
    # While it runs, its results are null
    response = client.get(url, query_string=query)
    assert response.status_code == 200
    assert response.get_json() is None
    assert response.get_data().strip() == b"null"
    # Then they are LlamaDeploy's TaskResult
    result = poll(lambda: ok(client.get(url, query_string=query)), lambda r: r is not None)
    assert result["task_id"] == task["task_id"]
    assert result["history"] == []
    assert result["result"] == "slept 0.2s"
    assert result["data"] == {}
    assert result["status"] == "succeeded"


def test_results_of_a_failed_task_say_error(client: FlaskClient) -> None:
    deployed(client, FAILING)
    task = create(client, "Failing", input="{}")
    wait_for_task(client, "Failing", task["task_id"])
    result = ok(client.get(f"/deployments/Failing/tasks/{task['task_id']}/results"))
    assert result["status"] == "failed"
    assert result["result"].startswith("Error:")
    assert "boom" in result["result"]


def test_results_with_the_wrong_session_are_not_found(quickstart: FlaskClient) -> None:
    task = create(quickstart, "QuickStart", input="{}")
    wait_for_task(quickstart, "QuickStart", task["task_id"])
    url = f"/deployments/QuickStart/tasks/{task['task_id']}/results"
    body = assert_error(quickstart.get(url, query_string={"session_id": "wrong"}), 404)
    assert "wrong" in body["message"]


# -- nothing stays queued ----------------------------------------------------------------------


def test_no_task_stays_queued(client: FlaskClient) -> None:
    # Given a mix of tasks that succeed, fail and sleep, submitted at once
    for path in (QUICKSTART, FAILING, SLEEPY):
        deployed(client, path)
    submitted = [
        ("QuickStart", create(client, "QuickStart", input={"message": str(i)})) for i in range(4)
    ]
    submitted += [("Failing", create(client, "Failing", input="{}")) for _ in range(3)]
    submitted += [
        ("Sleepy", create(client, "Sleepy", input={"seconds": 0.05 * i})) for i in range(4)
    ]
    # When they have all ended
    ended = {t["task_id"]: wait_for_task(client, d, t["task_id"])["status"] for d, t in submitted}
    # Then each succeeded or failed as its workflow did, and none is left queued
    assert sorted(ended.values()) == ["failed"] * 3 + ["succeeded"] * 8
    statuses = {t["task_id"]: t["status"] for t in all_tasks(client)}
    assert statuses == ended
    assert set(statuses.values()) <= TERMINAL


def test_a_standalone_task_opens_no_session(client: FlaskClient) -> None:
    # Given the quick start
    deploy(client, QUICKSTART)
    before = ok(client.get("/deployments/QuickStart/sessions"))
    # When a task is created standalone, with no session named
    created = ok(
        client.post(
            "/deployments/QuickStart/tasks/create?standalone=true",
            json={"input": {"message": "alone"}},
        )
    )
    # Then it has no session, and none was opened for it; it runs as any other
    assert created["session_id"] is None
    assert ok(client.get("/deployments/QuickStart/sessions")) == before
    assert wait_for_task(client, "QuickStart", created["task_id"])["status"] == "succeeded"
    # And a bad value for the flag is refused, naming it
    refused = client.post(
        "/deployments/QuickStart/tasks/create?standalone=maybe", json={"input": {}}
    )
    assert refused.status_code == 422 and "standalone" in refused.get_data(as_text=True)
