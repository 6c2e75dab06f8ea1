"""Writes ``count`` events, ``interval`` seconds apart, each stamped with its writing time."""

import asyncio
import time

from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent, StopEvent


class Tick(Event):
    """One timestamped event."""

    n: int
    sent_at: float


class TickerWorkflow(Workflow):
    """Streams ticks; the benchmark measures how long each takes to reach its reader."""

    @step
    async def tick(self, ctx: Context, ev: StartEvent) -> StopEvent:
        """Write the ticks."""
        count, interval = int(ev.get("count", 20)), float(ev.get("interval", 0.05))
        # Give readers time to connect: only events written while they listen are measured.
        await asyncio.sleep(float(ev.get("delay", 0)))
        for n in range(count):
            ctx.write_event_to_stream(Tick(n=n, sent_at=time.time()))
            await asyncio.sleep(interval)
        return StopEvent(result=count)


ticker_workflow = TickerWorkflow(timeout=600)
