"""Play a service worker: the reports it sends the control plane, handed over by task name.

A test that needs reports in an order a real run rarely gives (a start after the outcome, an
event after the end, a gap in event numbers) builds them here and hands each to the control
plane's handler for it, as the control-plane consumer does when the message arrives. Only the
protocol is used (task names and messages): not how the control plane records them.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery

from workers.protocol import (
    STEP_EVENT,
    STEP_FINISHED,
    STEP_STARTED,
    Message,
    StepEvent,
    StepFinished,
    StepStarted,
)

#: The worker the reports come from.
WORKER = "played@test"
#: When a played run began, unless a test says otherwise: a run is known by its worker and
#: this time, so a task's start and end reports name the same run by default.
STARTED_AT = time.time()
_TASK_NAMES: dict[type[Message], str] = {
    StepStarted: STEP_STARTED,
    StepEvent: STEP_EVENT,
    StepFinished: STEP_FINISHED,
}


def report(celery: Celery, message: StepStarted | StepEvent | StepFinished) -> None:
    """Run the control-plane task that handles ``message``, in this thread, on its payload."""
    celery.tasks[_TASK_NAMES[type(message)]](**message.encode())


def started(task_id: str, *, at: float = STARTED_AT, worker: str = WORKER) -> StepStarted:
    """A worker took the task (at ``at``: another time is another run)."""
    return StepStarted(task_id=task_id, worker=worker, at=at, inbox="")


def streamed(task_id: str, seq: int, *, input_required: bool = False) -> StepEvent:
    """The workflow wrote event number ``seq`` (a ``Note``, or a question for a person)."""
    name = "InputRequiredEvent" if input_required else "Note"
    event: dict[str, Any] = {
        "type": name,
        "qualified_name": f"workflow.{name}",
        "data": {"n": seq},
        "input_required": input_required,
    }
    return StepEvent(task_id=task_id, seq=seq, event=event, at=time.time())


def finished(
    task_id: str,
    *,
    ok: bool = True,
    event_count: int = 0,
    started_reported: bool = True,
    started_at: float = STARTED_AT,
    worker: str = WORKER,
    stop_seq: int | None = None,
) -> StepFinished:
    """The run that began at ``started_at`` ended after streaming ``event_count`` events
    (each reported on its own), and with them, if ``stop_seq`` is given, its ``StopEvent``
    under that number (a last event the report carries)."""
    events = []
    if stop_seq is not None:
        stop = {"type": "StopEvent", "qualified_name": "workflows.events.StopEvent", "data": {}}
        events.append(StepEvent(task_id=task_id, seq=stop_seq, event=stop, at=time.time()).encode())
        event_count = stop_seq + 1
    return StepFinished(
        task_id=task_id,
        ok=ok,
        result="done" if ok else None,
        error=None if ok else {"type": "ValueError", "message": "boom"},
        event_count=event_count,
        events=events,
        worker=worker,
        started_at=started_at,
        started_reported=started_reported,
        at=time.time(),
    )
