"""A workflow that answers with environment variables as its service sees them."""

from __future__ import annotations

import os

from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent


class ColourWorkflow(Workflow):
    """Report ``CELERIAC_TEST_COLOUR`` and ``CELERIAC_TEST_SHAPE``."""

    @step
    async def report(self, ev: StartEvent) -> StopEvent:
        """Return ``"<colour>/<shape>"``, with ``-`` for a variable that is not set."""
        colour = os.environ.get("CELERIAC_TEST_COLOUR", "-")
        shape = os.environ.get("CELERIAC_TEST_SHAPE", "-")
        return StopEvent(result=f"{colour}/{shape}")


colour_workflow = ColourWorkflow(timeout=10)
