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
_TASK_NAMES: dict[type[Message], str] = {
    StepStarted: STEP_STARTED,
    StepEvent: STEP_EVENT,
    StepFinished: STEP_FINISHED,
}


def report(celery: Celery, message: StepStarted | StepEvent | StepFinished) -> None:
    """Run the control-plane task that handles ``message``, in this thread, on its payload."""
    celery.tasks[_TASK_NAMES[type(message)]](**message.encode())


def started(task_id: str) -> StepStarted:
    """A worker took the task."""
    return StepStarted(task_id=task_id, worker=WORKER, at=time.time(), inbox="")


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
    task_id: str, *, ok: bool = True, event_count: int = 0, started_reported: bool = True
) -> StepFinished:
    """The run ended after streaming ``event_count`` events (each reported on its own)."""
    now = time.time()
    return StepFinished(
        task_id=task_id,
        ok=ok,
        result="done" if ok else None,
        error=None if ok else {"type": "ValueError", "message": "boom"},
        event_count=event_count,
        events=[],
        worker=WORKER,
        started_at=now,
        started_reported=started_reported,
        at=now,
    )
