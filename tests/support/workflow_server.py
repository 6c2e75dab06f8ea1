"""Scenarios that drive LlamaIndex's workflow-server API with the real ``llama-agents-client``.

Each takes a ``WorkflowClient`` built on a deployment of ``tests/app/workflows/wsapi`` and
asserts what the client sees; the embedded and the distributed tests run the same ones.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from llama_agents.client import EventEnvelopeWithMetadata, WorkflowClient
from workflows.events import HumanResponseEvent, InputRequiredEvent, StartEvent

#: The deployment file of the scenarios' workflows (deployment ``WsApi``).
WSAPI = Path(__file__).resolve().parent.parent / "app" / "workflows" / "wsapi" / "deployment.yml"
DEPLOYMENT = "WsApi"
#: Bound for anything that takes milliseconds; only a failing scenario waits this long.
DEADLINE = 30.0


def client_for(server: str) -> WorkflowClient:
    """A client of the ``WsApi`` deployment, mounted as LlamaIndex's appserver mounts it."""
    return WorkflowClient(base_url=f"{server}/deployments/{DEPLOYMENT}")


async def collect(client: WorkflowClient, handler_id: str, **options: Any) -> list[Any]:
    """Every event of a handler's stream, with its sequence number, until the stream ends."""
    stream = client.get_workflow_events(handler_id, **options)
    seen: list[tuple[Any, EventEnvelopeWithMetadata]] = []

    async def read() -> None:
        async for event in stream:
            seen.append((stream.last_sequence, event))

    await asyncio.wait_for(read(), DEADLINE)
    return seen


async def http_error(call: Any) -> httpx.Response:
    """The response of a client call that must fail with an HTTP error."""
    try:
        await call
    except httpx.HTTPStatusError as exc:
        return exc.response
    raise AssertionError("the call succeeded; an HTTP error was expected")


async def discovery(client: WorkflowClient) -> None:
    """Health and the workflow list: the deployment's service ids."""
    assert (await client.is_healthy()).status == "healthy"
    assert (await client.list_workflows()).workflows == ["ask", "broken", "greet", "relay"]


async def run_and_wait(client: WorkflowClient) -> str:
    """``run_workflow`` answers the completed handler with the result in a StopEvent."""
    handler = await client.run_workflow("greet", start_event=StartEvent(name="Ada", count=2))
    assert handler.status == "completed", handler
    assert handler.workflow_name == "greet"
    assert handler.result is not None
    assert handler.result.type == "StopEvent"
    assert handler.result.value == {"result": "hello Ada"}
    assert handler.error is None
    assert handler.completed_at and handler.started_at
    # And the handler reads back the same
    again = await client.get_handler(handler.handler_id)
    assert again.status == "completed" and again.result == handler.result
    return handler.handler_id


async def stream_live(client: WorkflowClient) -> str:
    """``run_workflow_nowait`` then the event stream: progress in order, the StopEvent last,
    and a stream that ends with the handler."""
    handler = await client.run_workflow_nowait(
        "greet", start_event={"name": "Bo", "count": 3}, handler_id="greet-streamed"
    )
    assert handler.handler_id == "greet-streamed"
    assert handler.status == "running"
    events = await collect(client, handler.handler_id)
    assert [e.type for _, e in events] == ["ProgressEvent"] * 3 + ["StopEvent"]
    assert [e.value for _, e in events[:3]] == [{"step": 0}, {"step": 1}, {"step": 2}]
    assert events[-1][1].value == {"result": "hello Bo"}
    assert [seq for seq, _ in events] == [0, 1, 2, 3]
    # Named as the user's folder spells the module, never by Celeriac's private import name
    assert events[0][1].qualified_name == "flows.ProgressEvent"
    final = await client.wait_for_handler(handler.handler_id, timeout=DEADLINE, poll_interval=0.05)
    assert final.status == "completed"
    return handler.handler_id


async def resume(client: WorkflowClient, handler_id: str) -> None:
    """A stream resumed after a sequence number gets exactly the events after it; one resumed
    after the last gets none and ends."""
    everything = await collect(client, handler_id)
    assert len(everything) == 4
    tail = await collect(client, handler_id, after_sequence=1)
    assert tail == everything[2:]
    assert await collect(client, handler_id, after_sequence=3) == []
    # "now" on an ended handler: nothing is left to come
    assert await collect(client, handler_id, after_sequence="now") == []
    bare = await collect(client, handler_id, after_sequence=2)
    assert [e.type for _, e in bare] == ["StopEvent"]


async def human_in_the_loop(client: WorkflowClient) -> str:
    """The question arrives live while the handler runs; the answer sent with ``send_event``
    reaches the waiting workflow, which streams on and completes with it."""
    handler = await client.run_workflow_nowait("ask", start_event=StartEvent(question="who?"))
    stream = client.get_workflow_events(handler.handler_id)
    seen: list[EventEnvelopeWithMetadata] = []

    async def read_and_answer() -> None:
        async for envelope in stream:
            seen.append(envelope)
            if envelope.type == "InputRequiredEvent":
                question = envelope.load_event()
                assert isinstance(question, InputRequiredEvent)
                assert question.get("prefix") == "who?"
                # The stream is live: the handler cannot have ended before it is answered
                assert (await client.get_handler(handler.handler_id)).status == "running"
                answer = HumanResponseEvent(response="Cy")
                assert (await client.send_event(handler.handler_id, answer)).status == "sent"

    try:
        await asyncio.wait_for(read_and_answer(), DEADLINE)
    except asyncio.TimeoutError:  # (not TimeoutError itself before Python 3.11)
        status = (await client.get_handler(handler.handler_id)).model_dump()
        raise AssertionError(
            f"the stream did not end within {DEADLINE:g} s; it gave {[e.type for e in seen]}, "
            f"and the handler is {status}"
        ) from None
    assert [e.type for e in seen] == ["InputRequiredEvent", "ProgressEvent", "StopEvent"]
    assert stream.last_sequence == 2
    done = await client.wait_for_handler(handler.handler_id, timeout=DEADLINE, poll_interval=0.05)
    assert done.status == "completed"
    assert done.result is not None and done.result.value == {"result": "answered Cy"}
    # And an ended handler takes no more events: 409
    late = await http_error(client.send_event(handler.handler_id, HumanResponseEvent(response="x")))
    assert late.status_code == 409
    return handler.handler_id


async def failure(client: WorkflowClient) -> str:
    """A failing run answers 502 in Celeriac's error shape; the handler shows ``failed`` with
    the workflow's error."""
    response = await http_error(client.run_workflow("broken", handler_id="broken-1"))
    assert response.status_code == 502
    body = response.json()
    assert body["code"] == 502 and "broken on purpose" in body["message"]
    handler = await client.get_handler("broken-1")
    assert handler.status == "failed"
    assert handler.error is not None and "broken on purpose" in handler.error
    assert handler.result is None
    return handler.handler_id


async def handlers(client: WorkflowClient, completed: set[str], failed: set[str]) -> None:
    """``get_handlers`` filters by status and by workflow name."""
    every = {h.handler_id: h for h in (await client.get_handlers()).handlers}
    assert completed | failed <= set(every)
    done = {h.handler_id for h in (await client.get_handlers(status=["completed"])).handlers}
    assert completed <= done and not failed & done
    broken = (await client.get_handlers(status=["failed"], workflow_name=["broken"])).handlers
    assert {h.handler_id for h in broken} == failed
    greets = (await client.get_handlers(workflow_name=["greet"])).handlers
    assert greets and all(h.workflow_name == "greet" for h in greets)
    assert (await client.get_handlers(status=["cancelled"])).handlers == []
    unknown = await http_error(client.get_handler("no-such-handler"))
    assert unknown.status_code == 404


async def cancel(client: WorkflowClient, handler_id: str) -> None:
    """The client cancels a handler that waits for a person: it ends ``cancelled``. A
    completed handler is not cancelled (409 in Celeriac's error shape, nothing changed), but
    ``purge`` deletes it; an unknown handler is 404."""
    waiting = await client.run_workflow_nowait("ask", start_event=StartEvent(question="who?"))
    await collect_until(client, waiting.handler_id, "InputRequiredEvent")
    cancelled = await client.cancel_handler(waiting.handler_id)
    assert cancelled.status == "cancelled"
    assert (await client.get_handler(waiting.handler_id)).status == "cancelled"
    before = await client.get_handler(handler_id)
    response = await http_error(client.cancel_handler(handler_id))
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == 409 and body["errors"] == {"task_id": handler_id, "status": "succeeded"}
    assert (await client.get_handler(handler_id)).status == before.status
    assert (await client.cancel_handler(handler_id, purge=True)).status == "deleted"
    assert (await http_error(client.get_handler(handler_id))).status_code == 404
    assert (await http_error(client.cancel_handler("no-such-handler"))).status_code == 404


async def describe(client: WorkflowClient) -> None:
    """Schema, events and representation come from a worker that loaded the workflow."""
    schema = await client.get_workflow_schema("greet")
    assert set(schema.start["properties"]) >= {"name", "count"}
    assert schema.start["title"] == "GreetStart"
    assert schema.stop["title"] == "StopEvent"
    events = await client.get_workflow_events_schema("ask")
    titles = {event.get("title") for event in events.events}
    assert {"InputRequiredEvent", "HumanResponseEvent", "StartEvent", "StopEvent"} <= titles
    graph = (await client.get_workflow_graph("greet")).graph
    steps = {node.id for node in graph.nodes if node.node_type == "step"}
    assert "greet" in steps
    assert graph.edges
    missing = await http_error(client.get_workflow_schema("missing"))
    assert missing.status_code == 404


async def custom_event(client: WorkflowClient) -> None:
    """An event of the workflow's own class, sent by its class name alone (as the client's
    envelopes name it), reaches the workflow: the worker's description names its module."""
    handler = await client.run_workflow_nowait("relay")
    first = await collect_until(client, handler.handler_id, "InputRequiredEvent")
    assert first.value == {"prefix": "go?"}
    sent = await client.send_event(handler.handler_id, {"type": "GoEvent", "value": {"word": "on"}})
    assert sent.status == "sent"
    done = await client.wait_for_handler(handler.handler_id, timeout=DEADLINE, poll_interval=0.05)
    assert done.result is not None and done.result.value == {"result": "went on"}


async def collect_until(client: WorkflowClient, handler_id: str, kind: str) -> Any:
    """The first event of type ``kind`` in a handler's stream (the stream is left then)."""
    stream = client.get_workflow_events(handler_id)

    async def first() -> Any:
        async for event in stream:
            if event.type == kind:
                await stream.aclose()
                return event
        raise AssertionError(f"the stream ended with no {kind}")

    return await asyncio.wait_for(first(), DEADLINE)
