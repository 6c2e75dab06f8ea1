"""Streams ``Note("before")``, sleeps ``seconds`` (default 1.5), streams ``Note("after")``, ends."""

from __future__ import annotations

import asyncio

from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent, StopEvent


class Note(Event):
    """A line written to the event stream."""

    text: str


class PauseWorkflow(Workflow):
    """Write an event, pause, write another, then finish."""

    @step
    async def pause(self, ctx: Context, ev: StartEvent) -> StopEvent:
        """The pause sits between the two streamed events."""
        seconds = float(ev.get("seconds", 1.5))
        ctx.write_event_to_stream(Note(text="before"))
        await asyncio.sleep(seconds)
        ctx.write_event_to_stream(Note(text="after"))
        return StopEvent(result=f"paused {seconds:g}s")


pause_workflow = PauseWorkflow(timeout=60)
