"""A body is read as its route documents it, or refused with 415: never ignored."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.app.conftest import all_tasks, assert_error, deployed, ok
from tests.conftest import QUICKSTART
from tests.support.workflow_server import DEPLOYMENT, WSAPI

Q = "/deployments/QuickStart"
W = f"/deployments/{DEPLOYMENT}"


@pytest.fixture
def apps(client: FlaskClient) -> FlaskClient:
    deployed(client, QUICKSTART)
    deployed(client, WSAPI)
    return client


@pytest.mark.parametrize(
    "path",
    [
        f"{Q}/tasks/run",
        f"{Q}/tasks/create",
        f"{W}/workflows/greet/run",
        f"{W}/workflows/greet/run-nowait",
    ],
)
@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_a_task_sent_in_a_body_that_is_not_json_is_refused_and_not_run(
    apps: FlaskClient, path: str, content_type: str
) -> None:
    # When a task is sent as a form or text, as a page's plain POST would send it
    response = apps.post(path, data='{"input": "{}"}', content_type=content_type)
    # Then it is refused with 415, and no task was made
    body = assert_error(response, 415)
    mimetype = content_type.split(";")[0]
    assert body["message"] == (
        f"this route reads a body of type application/json, not {mimetype}; nothing was done"
    )
    assert body["errors"] == {"Content-Type": ["expected application/json"]}
    assert all_tasks(apps) == []


def test_an_event_sent_in_a_body_that_is_not_json_is_refused(apps: FlaskClient) -> None:
    task = ok(apps.post(f"{Q}/tasks/create", json={}))
    for path in (f"{Q}/tasks/{task['task_id']}/events", f"{Q}/events/{task['task_id']}"):
        assert_error(apps.post(path, data="42", content_type="text/plain"), 415)
        assert_error(apps.post(path, data="42"), 415)  # no Content-Type at all


def test_a_deployment_file_sent_as_json_is_refused(apps: FlaskClient) -> None:
    response = apps.post("/deployments/create", json={"config_file": "name: X"})
    body = assert_error(response, 415)
    assert body["errors"] == {"Content-Type": ["expected multipart/form-data"]}
    assert "X" not in [d["name"] for d in ok(apps.get("/deployments/"))]


def test_json_types_and_empty_bodies_are_read(apps: FlaskClient) -> None:
    # A +json type, and a charset, are JSON
    assert ok(
        apps.post(
            f"{Q}/tasks/run",
            data='{"input": "{\\"message\\": \\"typed\\"}"}',
            content_type="application/vnd.celeriac+json",
        )
    ) == ("Message received: typed")
    assert ok(
        apps.post(
            f"{Q}/tasks/run",
            data='{"input": "{\\"message\\": \\"utf8\\"}"}',
            content_type="application/json; charset=utf-8",
        )
    ) == ("Message received: utf8")
    # An empty body is no body, whatever its type: the defaults apply
    created = ok(apps.post(f"{Q}/tasks/create", data="", content_type="text/plain"))
    assert created["task_id"]
    # POSTs that carry nothing (LlamaDeploy's sessions/create) are served
    assert ok(apps.post(f"{Q}/sessions/create"))["session_id"]
    session = ok(apps.post(f"{Q}/sessions/create", content_type="application/json"))
    ok(apps.post(f"{Q}/sessions/delete", query_string={"session_id": session["session_id"]}))
