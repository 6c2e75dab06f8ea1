"""Errors of the control plane; each maps to one HTTP status and a message a user can act on.

ControlPlaneError (500)
├── NotFound (404)            unknown deployment, service, session or task
├── BadRequest (400)          a request that cannot be served as asked (no service named...)
├── Conflict (409)            the name or id is taken, or the state forbids the change
├── InvalidInput (422)        a field's value is wrong; ``errors`` maps fields to reasons
├── TooLarge (413)            a body, file, input, event or result over its size limit
├── TaskFailed (502)          the task ran and its workflow failed
├── WorkflowNotDescribed (502) a worker could not load or describe the service's workflow
├── TaskTimeout (504)         the task did not end in time (it keeps running)
├── Unavailable (503)         the broker or database cannot be reached (with Retry-After)
└── Unsupported (501)         Celeriac does not do this yet (cancelling a running task)
"""

from __future__ import annotations

from typing import Any


class ControlPlaneError(Exception):
    """Root of the control plane's errors."""

    status_code = 500

    def __init__(self, message: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or {}


class NotFound(ControlPlaneError):
    """The named thing does not exist."""

    status_code = 404


class BadRequest(ControlPlaneError):
    """The request cannot be served as asked."""

    status_code = 400


class Conflict(ControlPlaneError):
    """The name or id is taken, or the current state forbids the change."""

    status_code = 409


class InvalidInput(ControlPlaneError):
    """Some fields have wrong values."""

    status_code = 422


class TooLarge(ControlPlaneError):
    """A body, file, input or event larger than this server takes; ``errors`` names it."""

    status_code = 413


class TaskFailed(ControlPlaneError):
    """The task's workflow raised an error."""

    status_code = 502


class WorkflowNotDescribed(ControlPlaneError):
    """A worker of the service could not load its workflow, or describe part of it."""

    status_code = 502


class TaskTimeout(ControlPlaneError):
    """The task is still running after the wait allowed."""

    status_code = 504


#: Seconds a client is told to wait before trying again after a 503 (``Retry-After``).
RETRY_AFTER = 2


class Unavailable(ControlPlaneError):
    """A backing service (broker, database) cannot be reached right now; the client may try
    again after ``retry_after`` seconds. When a task was stored before the outage, ``errors``
    names it (``task_id``) and says whether its step reached the broker (``published``), so
    that trying again never runs the work twice."""

    status_code = 503

    def __init__(
        self, message: str, errors: dict[str, Any] | None = None, retry_after: int = RETRY_AFTER
    ) -> None:
        super().__init__(message, errors)
        self.retry_after = retry_after


class Unsupported(ControlPlaneError):
    """Celeriac does not do this (yet); the request changed nothing."""

    status_code = 501
