"""Twin one: same module and attribute names as the other twin, a different answer."""

from __future__ import annotations

from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent

WHO = "one"


class TwinWorkflow(Workflow):
    """Say which twin answered."""

    @step
    async def answer(self, ev: StartEvent) -> StopEvent:
        """Return "twin <who>: <message>"."""
        return StopEvent(result=f"twin {WHO}: {ev.get('message', '')}")


twin_workflow = TwinWorkflow(timeout=10)
