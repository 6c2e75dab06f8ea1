"""Asks a question (InputRequiredEvent), waits for the reply (HumanResponseEvent), returns it."""

from workflows import Workflow, step
from workflows.events import HumanResponseEvent, InputRequiredEvent, StartEvent, StopEvent


class HumanInTheLoopWorkflow(Workflow):
    """The answer a person sends in becomes the result."""

    @step
    async def ask(self, ev: StartEvent) -> InputRequiredEvent:
        """Ask; the event is streamed to clients, who answer with a HumanResponseEvent."""
        # Events take extra keyword fields at run time; the type stubs do not know them.
        return InputRequiredEvent(prefix=ev.get("question", "What is the answer?"))  # type: ignore[call-arg]

    @step
    async def answer(self, ev: HumanResponseEvent) -> StopEvent:
        """The reply is the result."""
        return StopEvent(result=ev.response)


hitl_workflow = HumanInTheLoopWorkflow(timeout=600)
