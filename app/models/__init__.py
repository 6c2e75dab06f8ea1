"""SQLAlchemy models of the control plane's state."""

from app.models.attempt import AttemptOutcome, TaskAttempt
from app.models.base import Base
from app.models.deployment import Deployment, DeploymentVersion, Service
from app.models.event import Event, EventDirection
from app.models.idempotency import IdempotencyKey
from app.models.journal import Checkpoint, JournalTick, TaskStep
from app.models.session import Session
from app.models.stopped import StoppedStep
from app.models.task import Operation, Task, TaskStatus
from app.models.token import ApiToken, Scope
from app.models.worker import Worker

__all__ = [
    "ApiToken",
    "AttemptOutcome",
    "Base",
    "Checkpoint",
    "Deployment",
    "DeploymentVersion",
    "Event",
    "EventDirection",
    "IdempotencyKey",
    "JournalTick",
    "Operation",
    "Scope",
    "Service",
    "Session",
    "StoppedStep",
    "Task",
    "TaskAttempt",
    "TaskStatus",
    "TaskStep",
    "Worker",
]
