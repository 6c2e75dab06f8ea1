"""A workflow whose only step raises ``ValueError("boom")``."""

from __future__ import annotations

from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent


class BoomWorkflow(Workflow):
    """Fail every run."""

    @step
    async def explode(self, ev: StartEvent) -> StopEvent:
        """Raise, whatever the input."""
        raise ValueError("boom")


boom_workflow = BoomWorkflow(timeout=10)
