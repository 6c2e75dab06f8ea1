"""The orchestrator's Celery tasks: record what service workers report, on ``control_plane``.

They are thin adapters around the recorder, which also decides the next messages (the next
task of a session, events waiting for a worker); routing a new task is a plain function
(``app.control.routing``) run when the task is submitted, so mistakes are answered at once.
Control tasks retry on database outages instead of dropping a report.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from sqlalchemy.exc import InterfaceError, OperationalError

from app.control.recorder import Recorder
from workers.protocol import (
    HEARTBEAT,
    STEP_EVENT,
    STEP_FINISHED,
    STEP_STARTED,
    Heartbeat,
    StepEvent,
    StepFinished,
    StepStarted,
)

_RETRY: dict[str, Any] = {
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": True,
    "retry_backoff_max": 30,
    "max_retries": 200,
    "shared": False,
}


def register_control_tasks(celery: Celery, recorder: Recorder) -> None:
    """Register the control-plane tasks that record reports from service workers."""

    @celery.task(name=STEP_STARTED, **_RETRY)
    def step_started(**payload: Any) -> None:
        recorder.started(StepStarted.decode(payload))

    @celery.task(name=STEP_EVENT, **_RETRY)
    def step_event(**payload: Any) -> None:
        recorder.event(StepEvent.decode(payload))

    @celery.task(name=STEP_FINISHED, **_RETRY)
    def step_finished(**payload: Any) -> None:
        recorder.finished(StepFinished.decode(payload))

    @celery.task(name=HEARTBEAT, **_RETRY)
    def heartbeat(**payload: Any) -> None:
        recorder.heartbeat(Heartbeat.decode(payload))
