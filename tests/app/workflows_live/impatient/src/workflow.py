"""Asks (InputRequiredEvent) and returns the answer (HumanResponseEvent); gives up after 8 s."""

from __future__ import annotations

from workflows import Workflow, step
from workflows.events import HumanResponseEvent, InputRequiredEvent, StartEvent, StopEvent


class ImpatientWorkflow(Workflow):
    """The answer a person sends in becomes the result, if it comes in time."""

    @step
    async def ask(self, ev: StartEvent) -> InputRequiredEvent:
        """Ask; clients answer with a HumanResponseEvent."""
        return InputRequiredEvent(prefix=ev.get("question", "What is the answer?"))  # type: ignore[call-arg]

    @step
    async def answer(self, ev: HumanResponseEvent) -> StopEvent:
        """The reply is the result."""
        return StopEvent(result=ev.response)


impatient_workflow = ImpatientWorkflow(timeout=8)
