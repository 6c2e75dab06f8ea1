"""Small workflows for the workflow-server API tests: progress, a question, a failure."""

from __future__ import annotations

from workflows import Context, Workflow, step
from workflows.events import (
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
)


class GreetStart(StartEvent):
    """The greeting's input."""

    name: str = "world"
    count: int = 3


class ProgressEvent(Event):
    """One step of progress."""

    step: int


class GreetWorkflow(Workflow):
    """Streams ``count`` progress events, then greets ``name``."""

    @step
    async def greet(self, ctx: Context, ev: GreetStart) -> StopEvent:
        """Report progress, then answer."""
        for number in range(ev.count):
            ctx.write_event_to_stream(ProgressEvent(step=number))
        return StopEvent(result=f"hello {ev.name}")


class AskWorkflow(Workflow):
    """Asks a question, streams a progress event when answered, returns the answer."""

    @step
    async def ask(self, ev: StartEvent) -> InputRequiredEvent:
        """Ask; the client answers with a HumanResponseEvent."""
        return InputRequiredEvent(prefix=ev.get("question", "name?"))  # type: ignore[call-arg]

    @step
    async def answer(self, ctx: Context, ev: HumanResponseEvent) -> StopEvent:
        """The answer is the result."""
        ctx.write_event_to_stream(ProgressEvent(step=99))
        return StopEvent(result=f"answered {ev.response}")


class GoEvent(HumanResponseEvent):
    """A reply of the workflow's own type: the client names it by its class name only."""

    word: str


class RelayWorkflow(Workflow):
    """Waits for a GoEvent, returns its word."""

    @step
    async def wait(self, ev: StartEvent) -> InputRequiredEvent:
        """Ask for a GoEvent."""
        return InputRequiredEvent(prefix="go?")  # type: ignore[call-arg]

    @step
    async def go(self, ev: GoEvent) -> StopEvent:
        """The word is the result."""
        return StopEvent(result=f"went {ev.word}")


class BrokenWorkflow(Workflow):
    """Always fails."""

    @step
    async def fail(self, ev: StartEvent) -> StopEvent:
        """Raise."""
        raise RuntimeError("broken on purpose")


greet_workflow = GreetWorkflow(timeout=30)
ask_workflow = AskWorkflow(timeout=120)
broken_workflow = BrokenWorkflow(timeout=30)
relay_workflow = RelayWorkflow(timeout=120)
