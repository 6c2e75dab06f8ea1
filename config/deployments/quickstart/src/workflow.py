"""Quick start workflow: one step that echoes the ``message`` it is given."""

from __future__ import annotations

from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent


class EchoWorkflow(Workflow):
    """Reply with the message received."""

    @step
    async def echo(self, ev: StartEvent) -> StopEvent:
        """Return the run's ``message`` keyword argument, prefixed."""
        message = ev.get("message", "")
        return StopEvent(result=f"Message received: {message}")


echo_workflow = EchoWorkflow(timeout=60)
