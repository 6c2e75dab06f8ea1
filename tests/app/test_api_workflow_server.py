"""LlamaIndex's workflow-server API, driven by the real ``llama-agents-client`` over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask.testing import FlaskClient

from tests.app.conftest import assert_error, deployed, field_errors, poll
from tests.support import workflow_server as scenario
from tests.support.workflow_server import DEPLOYMENT, WSAPI, client_for

BASE = f"/deployments/{DEPLOYMENT}"


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run one scenario on a fresh event loop."""
    return asyncio.run(coroutine)


@pytest.fixture
def api(client: FlaskClient, live_server: str) -> str:
    """The live server's URL, with the ``WsApi`` deployment deployed."""
    deployed(client, WSAPI)
    return live_server


def test_health_and_workflows(api: str) -> None:
    run(scenario.discovery(client_for(api)))


def test_run_waits_for_the_result(api: str) -> None:
    run(scenario.run_and_wait(client_for(api)))


def test_stream_is_live_and_resumable(api: str) -> None:
    client = client_for(api)
    handler_id = run(scenario.stream_live(client))
    run(scenario.resume(client, handler_id))


def test_human_input_answered_with_send_event(api: str) -> None:
    run(scenario.human_in_the_loop(client_for(api)))


def test_failure_handlers_and_cancel(api: str) -> None:
    client = client_for(api)
    completed = {run(scenario.run_and_wait(client)), run(scenario.stream_live(client))}
    failed = {run(scenario.failure(client))}
    run(scenario.handlers(client, completed, failed))
    run(scenario.cancel(client, next(iter(completed))))


def test_unknown_deployment_and_workflow_are_404(api: str) -> None:
    async def calls() -> None:
        nowhere = scenario.WorkflowClient(base_url=f"{api}/deployments/Nowhere")
        assert (await scenario.http_error(nowhere.list_workflows())).status_code == 404
        assert (await scenario.http_error(nowhere.is_healthy())).status_code == 404
        missing = client_for(api).run_workflow_nowait("missing")
        response = await scenario.http_error(missing)
        assert response.status_code == 404 and "missing" in response.json()["message"]

    run(calls())


def test_bad_input_is_a_4xx_naming_the_field(client: FlaskClient) -> None:
    # Given the deployment and a finished handler
    deployed(client, WSAPI)
    done = client.post(f"{BASE}/workflows/greet/run", json={"start_event": {"count": 0}})
    assert done.status_code == 200, done.get_data(as_text=True)
    handler_id = done.get_json()["handler_id"]

    # Then each mistake names its field
    def fields(response: Any, code: int = 422) -> dict[str, Any]:
        return field_errors(assert_error(response, code))

    bad_after = client.get(f"{BASE}/events/{handler_id}?after_sequence=soon")
    assert "after_sequence" in fields(bad_after)
    bad_header = client.get(f"{BASE}/events/{handler_id}", headers={"Last-Event-ID": "x"})
    assert "Last-Event-ID" in fields(bad_header)
    assert "status" in fields(client.get(f"{BASE}/handlers?status=sleeping"))
    context = client.post(f"{BASE}/workflows/greet/run-nowait", json={"context": {"x": 1}})
    assert "context" in fields(context)
    not_object = client.post(f"{BASE}/workflows/greet/run-nowait", json={"start_event": [1]})
    assert "start_event" in fields(not_object)
    taken = client.post(f"{BASE}/workflows/greet/run-nowait", json={"handler_id": handler_id})
    assert_error(taken, 409)
    send = f"{BASE}/events/{handler_id}"
    assert "event" in fields(client.post(send, json={}))
    assert "step" in fields(client.post(send, json={"event": {"type": "StopEvent"}, "step": "s"}))
    assert "event" in fields(client.post(send, json={"event": "{not json"}))
    # And a well-formed event to an ended handler is a conflict
    ended = client.post(send, json={"event": {"type": "HumanResponseEvent", "value": {}}})
    assert_error(ended, 409)


def test_ndjson_stream_without_qualified_names(client: FlaskClient) -> None:
    deployed(client, WSAPI)
    done = client.post(f"{BASE}/workflows/greet/run", json={"start_event": {"count": 1}})
    handler_id = done.get_json()["handler_id"]
    response = client.get(
        f"{BASE}/events/{handler_id}",
        query_string={"sse": "false", "after_sequence": "-1", "include_qualified_name": "false"},
    )
    assert response.status_code == 200
    assert response.mimetype == "application/x-ndjson"
    lines = [httpx.Response(200, content=line).json() for line in response.get_data().splitlines()]
    assert [line["type"] for line in lines] == ["ProgressEvent", "StopEvent"]
    assert all(line["qualified_name"] is None for line in lines)
    assert lines[1]["value"] == {"result": "hello world"}


def test_schema_events_and_representation(api: str) -> None:
    run(scenario.describe(client_for(api)))


def test_an_event_of_the_workflows_own_type_is_sent_by_name(api: str) -> None:
    run(scenario.custom_event(client_for(api)))


def test_a_workflow_that_could_not_be_described_is_asked_about_again(
    client: FlaskClient, tmp_path: Path
) -> None:
    # Given a service whose module fails to import while a marker file exists
    marker = tmp_path / "broken"
    marker.touch()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "flaky.py").write_text(
        "import pathlib\n"
        f"if pathlib.Path({str(marker)!r}).exists():\n"
        "    raise RuntimeError('not today')\n"
        "from workflows import Workflow, step\n"
        "from workflows.events import StartEvent, StopEvent\n"
        "class Flaky(Workflow):\n"
        "    @step\n"
        "    async def go(self, ev: StartEvent) -> StopEvent:\n"
        "        return StopEvent(result='ok')\n"
        "flaky = Flaky()\n"
    )
    deployment = tmp_path / "deployment.yml"
    deployment.write_text(
        "name: Flaky\ncontrol-plane: {}\nservices:\n  flaky:\n    name: Flaky\n"
        "    source: {type: local, name: src}\n    path: src/flaky:flaky\n"
    )
    deployed(client, deployment)
    url = "/deployments/Flaky/workflows/flaky/schema"
    # When it is described: the worker's error, as a 502 naming it
    body = assert_error(client.get(url), 502)
    assert "not today" in body["message"]
    # And once the cause is gone, a later request is answered from a fresh description
    marker.unlink()
    poll(lambda: client.get(url).status_code, lambda status: status == 200)
