"""Errors raised by the SDK, sync and async alike.

CeleriacError
├── ConnectionFailed          the server could not be reached, or the connection broke
│   └── RequestTimeout        the server did not answer within the HTTP timeout
└── APIError                  the server answered with an error (``status_code``, ``errors``)
    ├── BadRequest (400)      e.g. no service named and no ``default-service``
    ├── Unauthorized (401)    the server needs a live API token (``token=``, CELERIAC_TOKEN)
    ├── Forbidden (403)       the token's scope does not allow the call, or the server
    │                         refused where it came from
    ├── NotFound (404)        unknown deployment, service, session or task
    ├── Conflict (409)        the name or id is taken, or the state forbids the change
    │   ├── SessionBusy       ``multitask_strategy="reject"`` and the session runs a task
    │   ├── TaskEnded         an event sent to a task that has ended
    │   └── IdempotencyKeyReused
    │                         the ``idempotency_key`` was used with a different request
    ├── InvalidInput (422)    some fields have wrong values; ``errors`` says which and why
    ├── TaskFailed (502)      the task ran and its workflow raised
    ├── TaskTimeout (504)     the task did not end in time (server's ``tasks/run`` or the
    │                         client's ``wait``/``events`` timeout); it keeps running
    └── ServerError (5xx)     any other server error
"""

from __future__ import annotations

from typing import Any


class CeleriacError(Exception):
    """Root of every SDK error."""


class ConnectionFailed(CeleriacError):
    """The server could not be reached, or the connection broke."""


class RequestTimeout(ConnectionFailed):
    """The server did not answer within the HTTP timeout."""


class APIError(CeleriacError):
    """The server answered with an error."""

    def __init__(
        self, status_code: int, message: str, errors: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.errors = errors or {}

    def __str__(self) -> str:
        lines = [self.message]
        for field, reasons in _flat(self.errors):
            lines.append(f"  {field}: {reasons}")
        return "\n".join(lines)


class BadRequest(APIError):
    """400: the request cannot be served as asked."""


class Unauthorized(APIError):
    """401: the server needs a live API token, and got none (or an unknown or revoked one)."""


class Forbidden(APIError):
    """403: the token's scope does not allow this call (or the server refused its origin)."""


class NotFound(APIError):
    """404: the deployment, service, session or task does not exist."""


class Conflict(APIError):
    """409: the name or id is taken, or the state forbids the change."""


class SessionBusy(Conflict):
    """409: the session runs another task and the task was sent with ``reject``."""


class TaskEnded(Conflict):
    """409: the task has ended, so it takes no more events."""


class IdempotencyKeyReused(Conflict):
    """409: the ``idempotency_key`` was used with a different request (another route,
    input, service, task id or session) while it lives; nothing was stored."""


class InvalidInput(APIError):
    """422: some fields have wrong values; ``errors`` says which and why."""


class TaskFailed(APIError):
    """502: the task's workflow raised an error."""


class TaskTimeout(APIError):
    """504: the task is still running after the wait allowed; it keeps running."""


class ServerError(APIError):
    """Any other 5xx."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: InvalidInput,
    502: TaskFailed,
    504: TaskTimeout,
}


def error_for(status_code: int, body: Any, conflict: type[Conflict] = Conflict) -> APIError:
    """The exception for an error response; ``conflict`` is the class a 409 of this call
    means (a busy session and a reused idempotency key are recognised from the body
    whatever the call)."""
    message = f"HTTP {status_code}"
    errors: dict[str, Any] = {}
    if isinstance(body, dict):
        message = str(body.get("message") or body.get("detail") or body.get("status") or message)
        raw_errors = body.get("errors")
        errors = raw_errors if isinstance(raw_errors, dict) else {}
    cls = _BY_STATUS.get(status_code, ServerError if status_code >= 500 else APIError)
    if status_code == 409:
        if "active_task_id" in errors:
            cls = SessionBusy
        elif "Idempotency-Key" in errors:
            cls = IdempotencyKeyReused
        else:
            cls = conflict
    return cls(status_code, message, errors)


def _flat(errors: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested ``{field: reasons}`` as ``(dotted.field, reasons)`` lines."""
    if not isinstance(errors, dict):
        return [(prefix or "error", str(errors))]
    lines: list[tuple[str, str]] = []
    for key, value in errors.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            lines.extend(_flat(value, path))
        elif isinstance(value, list):
            lines.append((path, "; ".join(str(v) for v in value)))
        else:
            lines.append((path, str(value)))
    return lines
