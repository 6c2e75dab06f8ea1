"""A worker's description of a workflow: its events' schemas and names, and its graph."""

from __future__ import annotations

from workflows import Workflow, step
from workflows.events import Event, StartEvent, StopEvent

from workers.description import describe_workflow


class Opaque:
    """A type pydantic has no JSON schema for."""


class Carries(Event):
    """An event with a field of an arbitrary type (events allow them)."""

    thing: Opaque


class Plain(Event):
    """An ordinary event."""

    n: int


class Mixed(Workflow):
    """Emits both."""

    @step
    async def first(self, ev: StartEvent) -> Carries:
        return Carries(thing=Opaque())

    @step
    async def second(self, ev: Carries) -> Plain:
        return Plain(n=1)

    @step
    async def third(self, ev: Plain) -> StopEvent:
        return StopEvent(result=ev.n)


def test_an_event_without_a_json_schema_does_not_hide_the_others() -> None:
    description = describe_workflow(Mixed())
    events = {event["name"]: event for event in description["events"]}
    # The event of an arbitrary type has an empty schema, and the rest are described
    assert events["Carries"]["schema"] == {}
    assert events["Plain"]["schema"]["properties"]["n"]["type"] == "integer"
    assert events["Plain"]["qualified_name"] == f"{__name__}.Plain"
    assert description["start"]["title"] == "StartEvent"
    # And the graph, which needs every event's schema, says why it cannot be drawn
    assert description["graph"]["error"].startswith("the workflow's graph cannot be drawn")


def test_a_plain_workflow_has_its_graph() -> None:
    class Simple(Workflow):
        @step
        async def only(self, ev: StartEvent) -> StopEvent:
            return StopEvent(result=1)

    graph = describe_workflow(Simple())["graph"]
    assert "error" not in graph
    assert "only" in {node["id"] for node in graph["nodes"]}
