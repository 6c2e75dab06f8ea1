"""Events sent into a run are decoded only into its workflow's own event classes and the
framework's, by any name a client gives them; nothing a client names is ever imported."""

from __future__ import annotations

import json
import sys

import pytest
from workflows import Context, Workflow, step
from workflows.events import Event, HumanResponseEvent, StartEvent, StopEvent

from workers.inbox import EventTypes


class Answer(Event):
    """An event of the workflow's own."""

    text: str


class Quiz(Workflow):
    """Waits for an Answer."""

    @step
    async def start(self, ctx: Context, ev: StartEvent) -> None:
        return None

    @step
    async def answer(self, ev: Answer) -> StopEvent:
        return StopEvent(result=ev.text)


def sent(qualified_name: str, **value: object) -> str:
    """An event as a client sends it (llama-index's JSON form)."""
    return json.dumps({"__is_pydantic": True, "value": value, "qualified_name": qualified_name})


@pytest.fixture
def types() -> EventTypes:
    return EventTypes(Quiz())


@pytest.mark.parametrize("name", [f"{__name__}.Answer", "Answer"])
def test_the_workflows_own_event_by_qualified_or_class_name(types: EventTypes, name: str) -> None:
    event = types.decode(sent(name, text="42"))
    assert type(event) is Answer
    assert event.text == "42"


@pytest.mark.parametrize(
    "name",
    [
        "workflows.events.HumanResponseEvent",
        "llama_index.core.workflow.events.HumanResponseEvent",
        "HumanResponseEvent",
    ],
)
def test_a_persons_answer_by_any_of_its_names(types: EventTypes, name: str) -> None:
    event = types.decode(sent(name, response="yes"))
    assert type(event) is HumanResponseEvent
    assert event.response == "yes"


@pytest.mark.parametrize(
    "name", ["subprocess.Popen", "tests.workers.never_imported.Thing", "Mystery", None]
)
def test_any_other_name_is_refused_and_nothing_is_imported(
    types: EventTypes, name: str | None
) -> None:
    before = set(sys.modules)
    with pytest.raises(ValueError, match="is not an event this workflow takes"):
        types.decode(json.dumps({"__is_pydantic": True, "value": {}, "qualified_name": name}))
    assert set(sys.modules) == before


def test_without_a_workflow_only_the_framework_events_are_taken() -> None:
    types = EventTypes()
    assert type(types.decode(sent("HumanResponseEvent", response="x"))) is HumanResponseEvent
    with pytest.raises(ValueError):
        types.decode(sent(f"{__name__}.Answer", text="x"))


def test_an_event_without_the_pydantic_marker_is_still_decoded_into_its_class(
    types: EventTypes,
) -> None:
    # The control plane takes any object with a qualified_name and a value
    event = types.decode(json.dumps({"qualified_name": "Answer", "value": {"text": "42"}}))
    assert type(event) is Answer
    assert event.text == "42"
