"""Python SDK of Celeriac's HTTP API: :class:`Client` (sync) and :class:`AsyncClient` (async).

Both have the same namespaces and methods (``deployments``, ``tasks``, ``sessions``) and raise
the same errors, one tree rooted at :class:`CeleriacError` (drawn in ``app/sdk/_errors.py``).
Everything public is listed in ``__all__``; the modules behind it are private.
"""

from app.sdk._async_client import AsyncClient, AsyncEventStream
from app.sdk._calls import DEFAULT_SERVER, DEFAULT_TIMEOUT, MultitaskStrategy
from app.sdk._client import Client, EventStream
from app.sdk._errors import (
    APIError,
    BadRequest,
    CeleriacError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    IdempotencyKeyReused,
    InvalidInput,
    NotFound,
    RequestTimeout,
    ServerError,
    SessionBusy,
    TaskEnded,
    TaskFailed,
    TaskTimeout,
    Unauthorized,
)
from app.sdk._models import (
    Attempt,
    Deployment,
    EventDefinition,
    EventItem,
    LiveService,
    Service,
    Session,
    Status,
    Step,
    Task,
    TaskResult,
    Worker,
)

__all__ = [
    "DEFAULT_SERVER",
    "DEFAULT_TIMEOUT",
    "APIError",
    "AsyncClient",
    "AsyncEventStream",
    "Attempt",
    "BadRequest",
    "CeleriacError",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Deployment",
    "EventDefinition",
    "EventItem",
    "EventStream",
    "Forbidden",
    "IdempotencyKeyReused",
    "InvalidInput",
    "LiveService",
    "MultitaskStrategy",
    "NotFound",
    "RequestTimeout",
    "ServerError",
    "Service",
    "Session",
    "SessionBusy",
    "Status",
    "Step",
    "Task",
    "TaskEnded",
    "TaskFailed",
    "TaskResult",
    "TaskTimeout",
    "Unauthorized",
    "Worker",
]
