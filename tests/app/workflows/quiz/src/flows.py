"""Ask with an event class of this module, and wait for an answer of another."""

from __future__ import annotations

from workflows import Context, Workflow, step
from workflows.events import Event, HumanResponseEvent, InputRequiredEvent, StartEvent, StopEvent


class Progress(Event):
    """Written to the stream before the question."""

    note: str


class Question(InputRequiredEvent):
    """What the quiz asks."""


class Answer(HumanResponseEvent):
    """What a person answers."""


class Quiz(Workflow):
    """One question; the answer is the result."""

    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> Question:
        ctx.write_event_to_stream(Progress(note="asking"))
        return Question(prefix="Six times seven?")

    @step
    async def answer(self, ev: Answer) -> StopEvent:
        return StopEvent(result=ev.response)


quiz = Quiz()
