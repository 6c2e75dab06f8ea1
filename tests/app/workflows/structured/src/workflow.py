"""A workflow that returns a dict built from its ``message``."""

from __future__ import annotations

from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent


class StructuredWorkflow(Workflow):
    """Answer with an object."""

    @step
    async def build(self, ev: StartEvent) -> StopEvent:
        """Return the message, its length and a nested value."""
        message = str(ev.get("message", ""))
        return StopEvent(
            result={"message": message, "length": len(message), "nested": {"ok": True}}
        )


structured_workflow = StructuredWorkflow(timeout=10)
