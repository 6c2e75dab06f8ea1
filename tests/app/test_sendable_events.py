"""Events sent into a task are checked against its workflow's declared events (issue 14,
item 4): a foreign or malformed event gets 422 before anything is stored or sent, and the
task still waits; a declared event is accepted by any of its names. Through LlamaDeploy's
route, the workflow-server route, the CLI and the SDK."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import select
from workflows.events import Event, HumanResponseEvent

from app.cli.main import cli
from app.models import Event as EventRow
from app.sdk import Client, InvalidInput
from app.server import Server
from tests.app.conftest import assert_error, deployed, field_errors, ok, poll, wait_for_task
from tests.conftest import HITL

pytestmark = pytest.mark.usefixtures("no_task_left_behind")

APPROVAL = Path(__file__).resolve().parent / "workflows" / "approval" / "deployment.yml"
TASKS = "/deployments/HumanInTheLoop/tasks"
_events = EventRow.__table__


class Intruder(Event):
    """An event the workflow never declared, from the client's own module."""

    command: str = "id"


def serialized(name: Any, value: Any = None) -> str:
    """An event as llama-index's JsonSerializer writes it, naming the class ``name``."""
    return json.dumps({"__is_pydantic": True, "value": value or {}, "qualified_name": name})


def inputs(server: Server, task_id: str) -> list[Any]:
    """What was stored as sent into the task."""
    query = select(_events.c.data).where(_events.c.task_id == task_id, _events.c.direction == "in")
    with server.plane.db.engine.connect() as conn:
        return list(conn.scalars(query))


def status(client: FlaskClient, deployment: str, task_id: str) -> str:
    found: str = ok(client.get(f"/deployments/{deployment}/tasks/{task_id}"))["status"]
    return found


def waiting_task(client: FlaskClient, deployment: str) -> str:
    """A new task of ``deployment`` that asked its question and waits for the answer."""
    task_id: str = ok(client.post(f"/deployments/{deployment}/tasks/create", json={}))["task_id"]
    poll(lambda: status(client, deployment, task_id), lambda s: s == "waiting_input")
    return task_id


@pytest.fixture
def hitl(client: FlaskClient) -> Iterator[str]:
    """A waiting task of the human-in-the-loop example; answered after the test if need be."""
    deployed(client, HITL)
    task_id = waiting_task(client, "HumanInTheLoop")
    yield task_id
    if status(client, "HumanInTheLoop", task_id) not in {"succeeded", "failed"}:
        client.post(
            f"{TASKS}/{task_id}/events",
            json={"event_obj_str": serialized("HumanResponseEvent", {"response": "x"})},
        )


def assert_unchanged(server: Server, client: FlaskClient, task_id: str, imported: set[str]) -> None:
    """Nothing was stored or sent, the task still waits, and no module was imported."""
    assert inputs(server, task_id) == []
    assert status(client, "HumanInTheLoop", task_id) == "waiting_input"
    assert set(sys.modules) - imported == set()


# -- LlamaDeploy's route -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "os.system",
        "subprocess.Popen",
        "tests.app.never_imported.Thing",
        f"{__name__}.Intruder",
        "StartEventX",
    ],
)
def test_a_foreign_event_is_refused_and_changes_nothing(
    server: Server, client: FlaskClient, hitl: str, name: str
) -> None:
    before = set(sys.modules)
    body = {"service_id": "ask", "event_obj_str": serialized(name, {"command": "id"})}
    # When a waiting task is sent an event its workflow does not declare
    response = assert_error(client.post(f"{TASKS}/{hitl}/events", json=body), 422)
    # Then it is refused, naming the event and the ones the workflow takes
    assert response["message"] == (f"{name!r} is not an event the workflow of service 'ask' takes")
    assert field_errors(response)["event_obj_str"] == [
        f"{name!r} is not one of its events: HumanResponseEvent, InputRequiredEvent, "
        "StartEvent, StopEvent"
    ]
    assert_unchanged(server, client, hitl, before)
    # And the right answer still gets through
    answer = {"event_obj_str": serialized("HumanResponseEvent", {"response": "42"})}
    ok(client.post(f"{TASKS}/{hitl}/events", json=answer))
    assert wait_for_task(client, "HumanInTheLoop", hitl)["result"] == "42"


@pytest.mark.parametrize(
    "name",
    [
        "HumanResponseEvent",
        "workflows.events.HumanResponseEvent",
        "llama_index.core.workflow.events.HumanResponseEvent",
    ],
)
def test_a_persons_answer_is_taken_by_any_of_its_names(
    server: Server, client: FlaskClient, hitl: str, name: str
) -> None:
    sent = serialized(name, {"_data": {"response": "by name"}})
    ok(client.post(f"{TASKS}/{hitl}/events", json={"event_obj_str": sent}))
    assert wait_for_task(client, "HumanInTheLoop", hitl)["result"] == "by name"
    assert inputs(server, hitl) == [json.loads(sent)]


def test_a_value_that_is_not_an_object_is_refused(
    server: Server, client: FlaskClient, hitl: str
) -> None:
    before = set(sys.modules)
    sent = json.dumps({"qualified_name": "HumanResponseEvent", "value": ["42"]})
    body = assert_error(client.post(f"{TASKS}/{hitl}/events", json={"event_obj_str": sent}), 422)
    assert field_errors(body)["event_obj_str"] == ["value: expected an object, got list"]
    assert_unchanged(server, client, hitl, before)


def test_the_workflows_own_events_by_short_name_and_their_fields_checked(
    server: Server, client: FlaskClient
) -> None:
    # Given a workflow waiting for its own Approval(reviewer: str, approved: bool)
    deployed(client, APPROVAL)
    task_id = waiting_task(client, "Approval")
    url = f"/deployments/Approval/tasks/{task_id}/events"
    # When it is sent with a field of the wrong type, or without a required one
    for value, problems in (
        ({"reviewer": "ann", "approved": "yes"}, ["approved: expected boolean, got string"]),
        ({"approved": True}, ["reviewer: missing (a required field)"]),
        (
            {"reviewer": 7, "approved": 1},
            [
                "reviewer: expected string, got integer",
                "approved: expected boolean, got integer",
            ],
        ),
    ):
        body = assert_error(
            client.post(url, json={"event_obj_str": serialized("Approval", value)}), 422
        )
        # Then it is refused, naming each field, and nothing is stored
        assert body["message"] == "the fields of the Approval sent do not fit it"
        assert field_errors(body)["event_obj_str"] == problems
    assert inputs(server, task_id) == []
    assert status(client, "Approval", task_id) == "waiting_input"
    # And the workflow's own event, by its short name and with its fields, ends the task
    good = serialized("Approval", {"reviewer": "ann", "approved": True})
    ok(client.post(url, json={"event_obj_str": good}))
    assert wait_for_task(client, "Approval", task_id)["result"] == "ann: yes"


# -- the workflow server's route --------------------------------------------------------------


def test_the_workflow_server_route_refuses_a_foreign_event(
    server: Server, client: FlaskClient, hitl: str
) -> None:
    before = set(sys.modules)
    url = f"/deployments/HumanInTheLoop/events/{hitl}"
    evil = {"event": {"type": "Popen", "qualified_name": "subprocess.Popen", "value": {}}}
    body = assert_error(client.post(url, json=evil), 422)
    assert (
        body["message"] == "'subprocess.Popen' is not an event the workflow of service 'ask' takes"
    )
    assert list(field_errors(body)) == ["event"]
    assert_unchanged(server, client, hitl, before)
    answer = {"event": {"type": "HumanResponseEvent", "value": {"response": "ws"}}}
    assert ok(client.post(url, json=answer)) == {"status": "sent"}
    assert wait_for_task(client, "HumanInTheLoop", hitl)["result"] == "ws"


# -- the CLI and the SDK ----------------------------------------------------------------------


def test_the_cli_answers_by_short_name_and_reports_a_foreign_type(
    server: Server, client: FlaskClient, live_server: str, hitl: str
) -> None:
    def send(*args: str) -> Any:
        command = ["-s", live_server, "tasks", "send-event", "-d", "HumanInTheLoop", hitl, *args]
        return CliRunner().invoke(cli, command, prog_name="celeriac")

    refused = send("--type", "os.system", "--data", '{"command": "id"}')
    assert refused.exit_code == 1
    assert "'os.system' is not an event the workflow of service 'ask' takes" in refused.output
    assert "event_obj_str: 'os.system' is not one of its events" in refused.output
    assert inputs(server, hitl) == []
    answered = send("--type", "HumanResponseEvent", "--data", '{"response": "cli"}')
    assert answered.exit_code == 0, answered.output
    assert wait_for_task(client, "HumanInTheLoop", hitl)["result"] == "cli"


def test_the_sdk_raises_invalid_input_for_a_foreign_event(
    server: Server, client: FlaskClient, live_server: str, hitl: str
) -> None:
    with Client(live_server, timeout=10) as sdk:
        with pytest.raises(InvalidInput) as caught:
            sdk.tasks.send_event("HumanInTheLoop", hitl, Intruder(command="id"))
        assert caught.value.status_code == 422
        assert "event_obj_str" in caught.value.errors
        assert inputs(server, hitl) == []
        sdk.tasks.send_event("HumanInTheLoop", hitl, HumanResponseEvent(response="sdk"))  # type: ignore[call-arg]
    assert wait_for_task(client, "HumanInTheLoop", hitl)["result"] == "sdk"
