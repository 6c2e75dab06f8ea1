"""Events are named by the user's own module, never by the private name Celeriac imports it
under, on the way out (streams) and on the way in (an answer naming the user's class)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.app.conftest import deployed, ok, poll, wait_for_task

pytestmark = pytest.mark.usefixtures("no_task_left_behind")

QUIZ = Path(__file__).resolve().parent / "workflows" / "quiz" / "deployment.yml"
TASKS = "/deployments/Quiz/tasks"


def raw_events(client: FlaskClient, task_id: str) -> list[dict[str, Any]]:
    """The task's whole stream in llama-index's serialized form."""
    response = client.get(f"{TASKS}/{task_id}/events", query_string={"raw_event": "true"})
    lines = response.get_data(as_text=True).splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_an_answer_naming_the_users_own_class_reaches_the_workflow(client: FlaskClient) -> None:
    # Given a workflow that asks with its own Question class and waits for its own Answer
    deployed(client, QUIZ)
    task = ok(client.post(f"{TASKS}/create", json={}))
    url = f"{TASKS}/{task['task_id']}"
    poll(lambda: ok(client.get(url))["status"], lambda status: status == "waiting_input")
    # When a client answers with the class as the user's folder names it
    answer = {"__is_pydantic": True, "value": {"response": "42"}, "qualified_name": "flows.Answer"}
    body = {"service_id": "quiz", "event_obj_str": json.dumps(answer)}
    ok(client.post(f"{TASKS}/{task['task_id']}/events", json=body))
    # Then the workflow took it as its Answer and finished with it
    done = wait_for_task(client, "Quiz", task["task_id"])
    assert (done["status"], done["result"]) == ("succeeded", "42")
    # And the stream names the user's classes as their module is called in the folder
    names = [line["qualified_name"] for line in raw_events(client, task["task_id"])]
    assert names == ["flows.Progress", "flows.Question", "workflows.events.StopEvent"]
