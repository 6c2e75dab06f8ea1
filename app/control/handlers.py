"""Handlers, as LlamaIndex's workflow server names runs: Celeriac's tasks under that view."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import select

from app.control.deployments import find as find_deployment
from app.control.tasks import DEFAULT_NESTING, Submission, Tasks, json_object
from app.db import Database
from app.errors import InvalidInput
from app.models import Deployment, Task, TaskStatus
from app.models.base import new_id

#: Celeriac's task status -> the handler status ``llama-agents-client`` knows. A task that
#: waits in its queue or for a person's answer is still a run in progress: ``running``.
HANDLER_STATUS: dict[TaskStatus, str] = {
    TaskStatus.QUEUED: "running",
    TaskStatus.RUNNING: "running",
    TaskStatus.WAITING_INPUT: "running",
    TaskStatus.RETRYING: "running",
    TaskStatus.SUCCEEDED: "completed",
    TaskStatus.FAILED: "failed",
    TaskStatus.CANCELLED: "cancelled",
    TaskStatus.TIMED_OUT: "failed",
}
HANDLER_STATUSES = ("running", "completed", "failed", "cancelled")


def handler_status(status: str) -> str:
    """The handler status of a task status."""
    return HANDLER_STATUS[TaskStatus(status)]


def task_statuses(handler_statuses: Iterable[str]) -> set[str]:
    """The task statuses that show as any of ``handler_statuses``."""
    wanted = set(handler_statuses)
    return {task.value for task, shown in HANDLER_STATUS.items() if shown in wanted}


def start_input(start_event: Any, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A task's run keyword arguments from a workflow server's ``start_event`` (bare, or in an
    envelope with ``value``) and ``kwargs``: the start event's fields, as ``workflow.run``
    takes them."""
    fields: dict[str, Any] = dict(kwargs or {})
    if start_event is None:
        return fields
    if not isinstance(start_event, dict):
        raise InvalidInput(
            "start_event must be a JSON object",
            errors={"start_event": [f"expected an object, got {type(start_event).__name__}"]},
        )
    value: Any = start_event
    if _is_envelope(start_event):
        value = start_event.get("value", start_event.get("data")) or {}
        if not isinstance(value, dict):
            raise InvalidInput(
                "start_event.value must be a JSON object",
                errors={"start_event.value": [f"expected an object, got {type(value).__name__}"]},
            )
    return {**fields, **flatten_event_fields(value)}


def _is_envelope(event: dict[str, Any]) -> bool:
    """Whether a start event came wrapped (``{type, qualified_name, value}``): an envelope
    names its event, while a bare start event may well have a field called ``value``."""
    keys = set(event)
    names = {"type", "qualified_name"}
    return names <= keys or bool(names & keys and {"value", "data"} & keys)


def flatten_event_fields(value: dict[str, Any]) -> dict[str, Any]:
    """An event's fields with pydantic's ``_data`` (an event's extra fields) spread out."""
    extra = value.get("_data")
    if not isinstance(extra, dict):
        return dict(value)
    return {**extra, **{k: v for k, v in value.items() if k != "_data"}}


class Handlers:
    """Start, wait for and list a deployment's tasks as workflow-server handlers."""

    def __init__(self, db: Database, tasks: Tasks) -> None:
        self._db = db
        self._tasks = tasks

    def start(
        self, deployment: str, service: str, run_input: dict[str, Any], handler_id: str | None
    ) -> Task:
        """Queue a run of ``service``; the handler id (if given) becomes the task id."""
        return self._tasks.submit(
            self._submission(deployment, service, run_input, handler_id), single_use_session=True
        ).task

    def run(
        self,
        deployment: str,
        service: str,
        run_input: dict[str, Any],
        handler_id: str | None,
        timeout: float | None = None,
        abandoned: Callable[[], bool] | None = None,
    ) -> Task:
        """Run ``service`` and return its task once it succeeded (else ``TaskFailed`` or
        ``TaskTimeout``, as ``tasks/run``)."""
        submission = self._submission(deployment, service, run_input, handler_id or new_id())
        self._tasks.run(submission, timeout, abandoned)
        return self._tasks.get(deployment, str(submission.task_id))

    def all(
        self,
        deployment: str,
        *,
        statuses: Iterable[str] | None = None,
        services: Iterable[str] | None = None,
        limit: int = 1000,
    ) -> list[Task]:
        """The deployment's tasks, newest first, filtered by handler status and service."""
        with self._db.read() as db:
            query = select(Task).where(Task.deployment_id == find_deployment(db, deployment).id)
            if statuses is not None:
                query = query.where(Task.status.in_(sorted(task_statuses(statuses))))
            if services is not None:
                query = query.where(Task.service.in_(sorted(set(services))))
            query = query.order_by(Task.created_at.desc(), Task.id).limit(limit)
            return list(db.scalars(query))

    def services(self, deployment: str) -> list[str]:
        """The service ids of a deployment: its workflow names."""
        with self._db.read() as db:
            row: Deployment = find_deployment(db, deployment, with_services=True)
            return sorted(service.name for service in row.services)

    @staticmethod
    def _submission(
        deployment: str, service: str, run_input: dict[str, Any], handler_id: str | None
    ) -> Submission:
        return Submission(
            deployment=deployment, input=run_input, service_id=service, task_id=handler_id
        )


def event_obj_str(event: Any, max_depth: int = DEFAULT_NESTING) -> str:
    """LlamaDeploy's ``event_obj_str`` (llama-index's JSON of an event) from a workflow
    server's envelope ``{type, value}`` or ``{qualified_name, value}``; which events a task
    takes, by qualified name or class name, is checked when it is sent."""
    event = json_object(
        event,
        "event",
        what="event",
        must_be="an envelope object with type and value",
        expected="an object",
        max_depth=max_depth,
    )
    value = event.get("value", event.get("data", {}))
    if not isinstance(value, dict):
        raise InvalidInput(
            "event.value must be a JSON object of the event's fields",
            errors={"event.value": [f"expected an object, got {type(value).__name__}"]},
        )
    name = event.get("qualified_name") or event.get("type")
    if not isinstance(name, str) or not name:
        reason = "give the event's type (its class name) or qualified_name"
        raise InvalidInput(f"cannot tell which event to send: {reason}", errors={"event": [reason]})
    return json.dumps({"__is_pydantic": True, "value": value, "qualified_name": name})
