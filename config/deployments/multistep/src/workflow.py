"""Streaming workflow: three steps, each streaming a progress event and extending the message."""

from __future__ import annotations

from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent, StopEvent


class ProgressEvent(Event):
    """Progress report written to the event stream after each step."""

    progress: float
    message: str


class FirstStepDone(Event):
    """Carries the message from the first step to the second."""

    message: str


class SecondStepDone(Event):
    """Carries the message from the second step to the third."""

    message: str


def _extend(message: str) -> str:
    """Append the suffix every step adds."""
    return f"{message}_result"


class StreamingWorkflow(Workflow):
    """Append ``_result`` three times, streaming progress 0.3, 0.6 and 0.9."""

    @step
    async def first(self, ctx: Context, ev: StartEvent) -> FirstStepDone:
        """Start from the run's ``message`` keyword argument."""
        message = _extend(str(ev.get("message", "")))
        ctx.write_event_to_stream(ProgressEvent(progress=0.3, message=f"step one: {message}"))
        return FirstStepDone(message=message)

    @step
    async def second(self, ctx: Context, ev: FirstStepDone) -> SecondStepDone:
        """Extend the message a second time."""
        message = _extend(ev.message)
        ctx.write_event_to_stream(ProgressEvent(progress=0.6, message=f"step two: {message}"))
        return SecondStepDone(message=message)

    @step
    async def third(self, ctx: Context, ev: SecondStepDone) -> StopEvent:
        """Extend the message a last time and finish with it."""
        message = _extend(ev.message)
        ctx.write_event_to_stream(ProgressEvent(progress=0.9, message=f"step three: {message}"))
        return StopEvent(result=message)


streaming_workflow = StreamingWorkflow(timeout=60)
