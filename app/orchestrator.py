"""The orchestrator: decide where a task's steps go, and record what service workers report.

Routing is a plain function used when a task is submitted (so mistakes are answered at once);
recording runs as Celery tasks on the ``control_plane`` queue, as thin adapters around the
recorder. Control tasks retry on database outages instead of dropping a report.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from sqlalchemy.exc import InterfaceError, OperationalError

from app.control.recorder import Recorder
from app.errors import BadRequest, NotFound
from app.models import Task
from workers.protocol import (
    HEARTBEAT,
    STEP_EVENT,
    STEP_FINISHED,
    STEP_STARTED,
    Heartbeat,
    RunStep,
    StepEvent,
    StepFinished,
    StepStarted,
)


def route(deployment: str, spec: dict[str, Any], service_id: str | None) -> str:
    """The service that must run a task: the one named, else the deployment's default."""
    name = service_id or spec.get("default-service")
    if not name:
        raise BadRequest(
            f"no service_id given and deployment {deployment!r} has no default-service"
        )
    known = list(spec.get("services", {}))
    if name not in known:
        raise NotFound(
            f"service {name!r} not found in deployment {deployment!r} "
            f"(services: {', '.join(known)})"
        )
    return name


def first_step(task: Task, deployment: str, version: int) -> RunStep:
    """The message that starts a task: today a task is one workflow run on its service."""
    return RunStep(
        id=task.id,  # one first step per task: its id names the message in Flower too
        task_id=task.id,
        session_id=task.session_id,
        deployment=deployment,
        service=task.service,
        input=task.input,
        version=version,
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
