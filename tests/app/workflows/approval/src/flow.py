"""Ask for an approval; the answer is the workflow's own event, with typed fields."""

from __future__ import annotations

from workflows import Workflow, step
from workflows.events import HumanResponseEvent, InputRequiredEvent, StartEvent, StopEvent


class Approval(HumanResponseEvent):
    """A person's answer of the workflow's own: who decided, and what."""

    reviewer: str
    approved: bool


class ApprovalWorkflow(Workflow):
    """The decision sent in is the result."""

    @step
    async def ask(self, ev: StartEvent) -> InputRequiredEvent:
        return InputRequiredEvent(prefix="Approve?")  # type: ignore[call-arg]

    @step
    async def decide(self, ev: Approval) -> StopEvent:
        return StopEvent(result=f"{ev.reviewer}: {'yes' if ev.approved else 'no'}")


approval = ApprovalWorkflow(timeout=60)
