"""The durable benchmark's workflows: three steps chained by events, and a question.

Each step does next to nothing, so what is measured is what a step costs around the work:
the library's hand-over from step to step, and on a durable service the journal's message at
each step's end.
"""

from __future__ import annotations

from workflows import Context, Workflow, step
from workflows.events import (
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
)


class Second(Event):
    """The first step's result."""

    message: str


class Third(Event):
    """The second step's result."""

    message: str


class ThreeSteps(Workflow):
    """first -> second -> third; answers as the quick start's echo does."""

    @step
    async def first(self, ev: StartEvent) -> Second:
        """Take the run's ``message``."""
        return Second(message=ev.get("message", ""))

    @step
    async def second(self, ev: Second) -> Third:
        """Pass it on."""
        return Third(message=ev.message)

    @step
    async def third(self, ev: Third) -> StopEvent:
        """Answer with it, prefixed."""
        return StopEvent(result=f"Message received: {ev.message}")


class Asked(Event):
    """The first step is done; the question comes next."""


class Asking(Workflow):
    """first -> ask (waits for a HumanResponseEvent) -> the answer."""

    @step
    async def first(self, ctx: Context, ev: StartEvent) -> Asked:
        """Store something, so that a resumed run has state to restore."""
        await ctx.store.set("asked", True)
        return Asked()

    @step
    async def ask(self, ctx: Context, ev: Asked) -> StopEvent:
        """Ask, wait for the answer, return it; runs again from its top once answered."""
        answer = await ctx.wait_for_event(
            HumanResponseEvent,
            waiter_id="question",
            waiter_event=InputRequiredEvent(prefix="Your answer?"),  # type: ignore[call-arg]
        )
        return StopEvent(result=f"Answer received: {answer.response}")


three_steps = ThreeSteps(timeout=60)
asking = Asking(timeout=None)
