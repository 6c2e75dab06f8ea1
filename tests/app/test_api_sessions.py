"""``/deployments/{d}/sessions``: create, list, read and delete sessions, and their tasks."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.app.conftest import STRUCTURED, assert_error, deployed, field_errors, ok, wait_for_task
from tests.conftest import QUICKSTART

#: Every test here ends with all its tasks ended: a task never stays queued.
pytestmark = pytest.mark.usefixtures("no_task_left_behind")

SESSIONS = "/deployments/QuickStart/sessions"


@pytest.fixture
def quickstart(client: FlaskClient) -> FlaskClient:
    """The client, with the quick start deployed."""
    deployed(client, QUICKSTART)
    return client


def new_session(client: FlaskClient) -> str:
    """Create a session of the quick start; its id."""
    session_id: str = ok(client.post(f"{SESSIONS}/create"))["session_id"]
    return session_id


def create_task(client: FlaskClient, **body: Any) -> dict[str, Any]:
    """Queue a quick-start task."""
    task: dict[str, Any] = ok(client.post("/deployments/QuickStart/tasks/create", json=body))
    return task


def listed(client: FlaskClient) -> list[str]:
    """The ids of the quick start's live sessions."""
    return [s["session_id"] for s in ok(client.get(SESSIONS))]


def test_create_returns_an_empty_session(quickstart: FlaskClient) -> None:
    session = ok(quickstart.post(f"{SESSIONS}/create"))
    assert session["session_id"]
    assert session["task_ids"] == []
    assert session["state"] == {}


def test_created_sessions_are_listed_and_readable(quickstart: FlaskClient) -> None:
    # Given two sessions
    first, second = new_session(quickstart), new_session(quickstart)
    # Then both are listed, oldest first, and each can be read
    assert listed(quickstart) == [first, second]
    session = ok(quickstart.get(f"{SESSIONS}/{first}"))
    assert session["session_id"] == first
    assert session["task_ids"] == []
    assert session["state"] == {}


def test_no_sessions_at_first(quickstart: FlaskClient) -> None:
    assert ok(quickstart.get(SESSIONS)) == []


def test_session_lists_its_tasks_in_order(quickstart: FlaskClient) -> None:
    # Given a session with tasks created by body, by query, and run to their end
    session_id = new_session(quickstart)
    ids = [create_task(quickstart, input="{}", session_id=session_id)["task_id"] for _ in range(2)]
    by_query = quickstart.post(
        "/deployments/QuickStart/tasks/create",
        query_string={"session_id": session_id},
        json={"input": "{}"},
    )
    ids.append(ok(by_query)["task_id"])
    ran = quickstart.post(
        "/deployments/QuickStart/tasks/run",
        query_string={"session_id": session_id},
        json={"input": '{"message": "in session"}'},
    )
    assert ok(ran) == "Message received: in session"
    # Then the session holds them in submission order, and stays live after tasks/run
    session = ok(quickstart.get(f"{SESSIONS}/{session_id}"))
    assert session["task_ids"][:3] == ids
    assert len(session["task_ids"]) == 4
    assert listed(quickstart) == [session_id]
    (from_list,) = ok(quickstart.get(SESSIONS))
    assert from_list["task_ids"] == session["task_ids"]


def test_task_session_id_names_its_session(quickstart: FlaskClient) -> None:
    session_id = new_session(quickstart)
    task = create_task(quickstart, input="{}", session_id=session_id)
    assert task["session_id"] == session_id
    assert wait_for_task(quickstart, "QuickStart", task["task_id"])["session_id"] == session_id


def test_create_task_without_session_starts_a_live_one(quickstart: FlaskClient) -> None:
    # LlamaDeploy's tasks/create made a session when none was given, and kept it
    task = create_task(quickstart, input="{}")
    session = ok(quickstart.get(f"{SESSIONS}/{task['session_id']}"))
    assert session["task_ids"] == [task["task_id"]]
    assert listed(quickstart) == [task["session_id"]]


def test_run_without_session_leaves_no_live_session(quickstart: FlaskClient) -> None:
    # Given a task run without a session
    assert ok(quickstart.post("/deployments/QuickStart/tasks/run", json={"input": "{}"}))
    (task,) = ok(quickstart.get("/deployments/QuickStart/tasks"))
    # Then it ran in no session (where LlamaDeploy made one and deleted it): none is left
    # live for it, and the task is kept
    assert task["session_id"] is None
    assert ok(quickstart.get(SESSIONS)) == []
    assert ok(quickstart.get(f"/deployments/QuickStart/tasks/{task['task_id']}"))["status"] == (
        "succeeded"
    )


def test_delete_by_query_answers_null_and_keeps_the_tasks(quickstart: FlaskClient) -> None:
    # Given a session with a finished task
    session_id = new_session(quickstart)
    task = create_task(quickstart, input='{"message": "kept"}', session_id=session_id)
    wait_for_task(quickstart, "QuickStart", task["task_id"])
    # When it is deleted the LlamaDeploy way
    response = quickstart.post(f"{SESSIONS}/delete", query_string={"session_id": session_id})
    # Then the answer is null, the session is gone, and its task is still readable
    assert response.status_code == 200
    assert response.get_data().strip() == b"null"
    assert response.get_json() is None
    assert_error(quickstart.get(f"{SESSIONS}/{session_id}"), 404)
    assert listed(quickstart) == []
    kept = ok(quickstart.get(f"/deployments/QuickStart/tasks/{task['task_id']}"))
    assert kept["result"] == "Message received: kept"
    results = f"/deployments/QuickStart/tasks/{task['task_id']}/results"
    assert ok(quickstart.get(results))["result"] == "Message received: kept"
    by_session = ok(quickstart.get(f"/deployments/QuickStart/tasks?session_id={session_id}"))
    assert [t["task_id"] for t in by_session] == [task["task_id"]]


def test_delete_without_session_id_is_refused(quickstart: FlaskClient) -> None:
    session_id = new_session(quickstart)
    body = assert_error(quickstart.post(f"{SESSIONS}/delete"), 422)
    assert "session_id" in field_errors(body)
    assert listed(quickstart) == [session_id]


def test_delete_unknown_session_is_not_found(quickstart: FlaskClient) -> None:
    body = assert_error(quickstart.post(f"{SESSIONS}/delete?session_id=nope"), 404)
    assert "nope" in body["message"]


def test_delete_twice_is_not_found(quickstart: FlaskClient) -> None:
    session_id = new_session(quickstart)
    assert quickstart.post(f"{SESSIONS}/delete?session_id={session_id}").status_code == 200
    assert_error(quickstart.post(f"{SESSIONS}/delete?session_id={session_id}"), 404)


def test_delete_method_removes_the_session(quickstart: FlaskClient) -> None:
    # Given two sessions
    gone, kept = new_session(quickstart), new_session(quickstart)
    # When one is deleted with DELETE
    response = quickstart.delete(f"{SESSIONS}/{gone}")
    # Then it answers 204 without a body and only that one is gone
    assert response.status_code == 204
    assert response.get_data() == b""
    assert_error(quickstart.get(f"{SESSIONS}/{gone}"), 404)
    assert listed(quickstart) == [kept]
    assert_error(quickstart.delete(f"{SESSIONS}/{gone}"), 404)


def test_delete_method_on_unknown_session_is_not_found(quickstart: FlaskClient) -> None:
    assert_error(quickstart.delete(f"{SESSIONS}/nope"), 404)


def test_get_unknown_session_is_not_found(quickstart: FlaskClient) -> None:
    body = assert_error(quickstart.get(f"{SESSIONS}/nope"), 404)
    assert "nope" in body["message"]


def test_no_new_task_in_a_deleted_session(quickstart: FlaskClient) -> None:
    session_id = new_session(quickstart)
    assert quickstart.delete(f"{SESSIONS}/{session_id}").status_code == 204
    body = {"input": "{}", "session_id": session_id}
    assert_error(quickstart.post("/deployments/QuickStart/tasks/create", json=body), 404)
    assert_error(quickstart.post("/deployments/QuickStart/tasks/run", json=body), 404)
    assert ok(quickstart.get("/deployments/QuickStart/tasks")) == []


def test_sessions_belong_to_their_deployment(quickstart: FlaskClient) -> None:
    # Given a session of the quick start and another deployment
    deployed(quickstart, STRUCTURED)
    session_id = new_session(quickstart)
    other = "/deployments/Structured"
    # Then the other deployment neither lists, shows, deletes nor uses it
    assert ok(quickstart.get(f"{other}/sessions")) == []
    assert_error(quickstart.get(f"{other}/sessions/{session_id}"), 404)
    assert_error(quickstart.delete(f"{other}/sessions/{session_id}"), 404)
    body = {"input": "{}", "session_id": session_id}
    assert_error(quickstart.post(f"{other}/tasks/create", json=body), 404)
    assert listed(quickstart) == [session_id]


def test_deleting_the_deployment_deletes_its_sessions(quickstart: FlaskClient) -> None:
    session_id = new_session(quickstart)
    assert quickstart.delete("/deployments/QuickStart").status_code == 204
    deployed(quickstart, QUICKSTART)
    assert ok(quickstart.get(SESSIONS)) == []
    assert_error(quickstart.get(f"{SESSIONS}/{session_id}"), 404)
