"""Python SDK of Celeriac's HTTP API."""

from app.sdk.client import DEFAULT_SERVER, Client
from app.sdk.errors import (
    APIError,
    BadRequest,
    CeleriacError,
    Conflict,
    ConnectionFailed,
    InvalidInput,
    NotFound,
    ServerError,
    TaskFailed,
    TaskTimeout,
)
from app.sdk.models import Deployment, Service, Session, Status, Task

__all__ = [
    "DEFAULT_SERVER",
    "APIError",
    "BadRequest",
    "CeleriacError",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Deployment",
    "InvalidInput",
    "NotFound",
    "ServerError",
    "Service",
    "Session",
    "Status",
    "Task",
    "TaskFailed",
    "TaskTimeout",
]
