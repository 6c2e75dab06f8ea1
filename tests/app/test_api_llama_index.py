"""LlamaDeploy-era workflow code, importing ``llama_index.core.workflow``, on the real package.

Needs the ``llama-index`` extra (the README's test command installs it). The workflows live in
``workflows/llama_index``; this module itself imports nothing of llama-index, so that the
marshmallow-4 environment of ``.ci/run``, which cannot have it, deselects these tests by their
marker and still collects the rest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask.testing import FlaskClient
from workflows.context.serializers import JsonSerializer
from workflows.events import HumanResponseEvent

from tests.app.conftest import TERMINAL, deployed, ok

pytestmark = [pytest.mark.llama_index, pytest.mark.usefixtures("no_task_left_behind")]

LLAMA_INDEX = Path(__file__).resolve().parent / "workflows" / "llama_index" / "deployment.yml"
TASKS = "/deployments/LlamaIndexCore/tasks"
#: Bound on any one wait of a live stream; only a failing test waits this long.
DEADLINE = 20.0


def human_response(response: str) -> str:
    """A HumanResponseEvent as a LlamaDeploy client on llama-index-core writes it."""
    parsed = json.loads(JsonSerializer().serialize(HumanResponseEvent(response=response)))  # type: ignore[call-arg]
    parsed["qualified_name"] = "llama_index.core.workflow.events.HumanResponseEvent"
    return json.dumps(parsed)


@pytest.fixture
def llama(client: FlaskClient) -> Iterator[FlaskClient]:
    """The client, with the llama-index deployment; a task left waiting gets an answer."""
    deployed(client, LLAMA_INDEX)
    yield client
    for task in ok(client.get(TASKS, query_string={"limit": 1000})):
        if task["status"] not in TERMINAL:
            client.post(
                f"{TASKS}/{task['task_id']}/events",
                json={"service_id": "ask", "event_obj_str": human_response("left over")},
            )


def test_ctx_get_and_set_count_across_a_session(llama: FlaskClient) -> None:
    """The LlamaDeploy counter: ``await ctx.get("count", default=0)``, ``await ctx.set(...)``."""
    session_id = ok(llama.post("/deployments/LlamaIndexCore/sessions/create"))["session_id"]

    def count(session: str) -> Any:
        response = llama.post(f"{TASKS}/run", query_string={"session_id": session}, json={})
        return ok(response)

    # When three tasks of one session run, then one of a new session
    counts = [count(session_id) for _ in range(3)]
    fresh = ok(llama.post("/deployments/LlamaIndexCore/sessions/create"))["session_id"]
    # Then the session counted 1, 2, 3 and the new one starts over
    assert counts == [1, 2, 3]
    assert count(fresh) == 1


def test_streams_progress_and_asks_a_human(llama: FlaskClient, live_server: str) -> None:
    """Events stream live in order; the answer, sent with llama-index's qualified name, ends
    the task; state set with ``ctx.set`` in one step is read with ``ctx.get`` in the next."""
    with httpx.Client(base_url=live_server, timeout=DEADLINE) as http:
        # Given a task of the asking workflow, followed on its raw NDJSON stream
        body = {"service_id": "ask", "input": json.dumps({"question": "Six times seven?"})}
        task = http.post(f"{TASKS}/create", json=body).json()
        stream_url = f"{TASKS}/{task['task_id']}/events"
        received: list[dict[str, Any]] = []
        deadline = time.monotonic() + DEADLINE
        with http.stream("GET", stream_url, params={"raw_event": "true"}) as stream:
            for line in stream.iter_lines():
                assert time.monotonic() < deadline, "the stream did not end in time"
                if not line.strip():
                    continue
                received.append(json.loads(line))
                if received[-1]["qualified_name"].endswith("InputRequiredEvent"):
                    # When the question arrives, a person answers it
                    status = http.get(f"{TASKS}/{task['task_id']}").json()["status"]
                    answer = {"service_id": "ask", "event_obj_str": human_response("42")}
                    sent = http.post(stream_url, json=answer)
        done = http.get(f"{TASKS}/{task['task_id']}").json()
    # Then the progress came first, in order, under the user module's event class
    names = [event["qualified_name"] for event in received]
    assert [name.rsplit(".", 1)[-1] for name in names[:2]] == ["Progress", "Progress"]
    assert [event["value"]["done"] for event in received[:2]] == [1, 2]
    # And then the question, while the task waited for its answer
    assert names[2:] == ["workflows.events.InputRequiredEvent", "workflows.events.StopEvent"]
    assert received[2]["value"]["prefix"] == "Six times seven?"
    assert status == "waiting_input"
    # And the answer reached it and ended it, after the question it kept with ctx.set
    assert sent.status_code == 200, sent.text
    assert received[3]["value"] == {"result": "Six times seven? 42"}
    assert (done["status"], done["result"]) == ("succeeded", "Six times seven? 42")
