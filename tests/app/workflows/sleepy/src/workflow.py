"""A workflow that sleeps ``seconds`` (a run keyword argument) before it answers."""

from __future__ import annotations

import asyncio

from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent


class SleepyWorkflow(Workflow):
    """Sleep, then report how long."""

    @step
    async def nap(self, ev: StartEvent) -> StopEvent:
        """Sleep ``seconds`` (default 0) and return ``"slept <seconds>s"``."""
        seconds = float(ev.get("seconds", 0))
        await asyncio.sleep(seconds)
        return StopEvent(result=f"slept {seconds:g}s")


sleepy_workflow = SleepyWorkflow(timeout=30)
