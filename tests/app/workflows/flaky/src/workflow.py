"""A workflow that counts its runs in a file, streams the count, and fails the first run."""

from __future__ import annotations

from pathlib import Path

from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent, StopEvent


class RunEvent(Event):
    """Which run of the task this is (1 for the first)."""

    run: int


class FlakyWorkflow(Workflow):
    """Fail with ``ValueError("first run")`` the first time ``counter`` is seen; succeed after."""

    @step
    async def count(self, ctx: Context, ev: StartEvent) -> StopEvent:
        """Count this run in the file ``counter`` names, stream the count, then end."""
        counter = Path(ev.get("counter"))
        runs = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(runs))
        ctx.write_event_to_stream(RunEvent(run=runs))
        if runs == 1:
            raise ValueError("first run")
        return StopEvent(result=f"ok after {runs} runs")


flaky_workflow = FlakyWorkflow(timeout=10)
