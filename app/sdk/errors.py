"""Errors raised by the SDK.

CeleriacError
├── ConnectionFailed          the server could not be reached
└── APIError                  the server answered with an error (``status_code``, ``errors``)
    ├── BadRequest (400)
    ├── NotFound (404)
    ├── Conflict (409)
    ├── InvalidInput (422)
    ├── TaskFailed (502)      the task ran and its workflow failed
    ├── TaskTimeout (504)     the task did not end in time; it keeps running
    └── ServerError (5xx)
"""

from __future__ import annotations

from typing import Any


class CeleriacError(Exception):
    """Root of every SDK error."""


class ConnectionFailed(CeleriacError):
    """The server could not be reached."""


class APIError(CeleriacError):
    """The server answered with an error."""

    def __init__(self, status_code: int, message: str, errors: dict[str, Any] | None = None):
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


class NotFound(APIError):
    """404: the deployment, service, session or task does not exist."""


class Conflict(APIError):
    """409: the name or id is taken, or the state forbids the change."""


class InvalidInput(APIError):
    """422: some fields have wrong values; ``errors`` says which and why."""


class TaskFailed(APIError):
    """502: the task's workflow raised an error."""


class TaskTimeout(APIError):
    """504: the task is still running after the wait allowed."""


class ServerError(APIError):
    """Any other 5xx."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    404: NotFound,
    409: Conflict,
    422: InvalidInput,
    502: TaskFailed,
    504: TaskTimeout,
}


def error_for(status_code: int, body: Any) -> APIError:
    """The exception for an error response."""
    message = f"HTTP {status_code}"
    errors: dict[str, Any] = {}
    if isinstance(body, dict):
        message = str(body.get("message") or body.get("detail") or body.get("status") or message)
        errors = body.get("errors") or {}
    cls = _BY_STATUS.get(status_code, ServerError if status_code >= 500 else APIError)
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
