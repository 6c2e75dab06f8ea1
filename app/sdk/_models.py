"""Typed views of the API's answers."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

#: Statuses after which a task changes no more.
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled", "timed_out"})


def _time(value: str | None) -> dt.datetime | None:
    """An ISO 8601 timestamp of the API, or None."""
    return dt.datetime.fromisoformat(value) if value else None


@dataclass(frozen=True)
class Status:
    """Server health."""

    status: str
    status_message: str
    max_deployments: int | None
    deployments: list[str]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Status:
        """Build from the API's JSON."""
        return cls(
            status=data["status"],
            status_message=data.get("status_message", ""),
            max_deployments=data.get("max_deployments"),
            deployments=list(data.get("deployments") or []),
        )


@dataclass(frozen=True)
class Service:
    """A service of a deployment."""

    name: str
    display_name: str
    queue: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Service:
        """Build from the API's JSON."""
        return cls(name=data["name"], display_name=data["display_name"], queue=data["queue"])


@dataclass(frozen=True)
class Worker:
    """A live worker consuming a service's queue."""

    name: str
    host: str | None = None
    pid: int | None = None
    started_at: dt.datetime | None = None
    last_heartbeat: dt.datetime | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Worker:
        """Build from the API's JSON."""
        return cls(
            name=data["name"],
            host=data.get("host"),
            pid=data.get("pid"),
            started_at=_time(data.get("started_at")),
            last_heartbeat=_time(data.get("last_heartbeat")),
        )


@dataclass(frozen=True)
class LiveService(Service):
    """A service with the workers consuming its queue now."""

    workers: list[Worker] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LiveService:
        """Build from the API's JSON."""
        return cls(
            name=data["name"],
            display_name=data["display_name"],
            queue=data["queue"],
            workers=[Worker.from_json(w) for w in data.get("workers") or []],
        )


@dataclass(frozen=True)
class Deployment:
    """A deployment."""

    name: str
    default_service: str | None = None
    version: int = 1
    services: list[Service] = field(default_factory=list)
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    base_path: str | None = None
    #: What the file holds that is accepted but does nothing (a default-service naming no
    #: service, a ``ui``).
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deployment:
        """Build from the API's JSON."""
        return cls(
            name=data["name"],
            default_service=data.get("default_service"),
            version=data.get("version", 1),
            services=[Service.from_json(s) for s in data.get("services") or []],
            created_at=_time(data.get("created_at")),
            updated_at=_time(data.get("updated_at")),
            base_path=data.get("base_path"),
            warnings=list(data.get("warnings") or []),
        )


@dataclass(frozen=True)
class Attempt:
    """One run of a task: its worker, when it began and ended, and how (``succeeded``,
    ``failed``, or ``lost``: it never reported its end); ``outcome`` is None while it runs."""

    attempt: int
    worker: str
    started_at: dt.datetime | None
    finished_at: dt.datetime | None = None
    outcome: str | None = None
    error: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attempt:
        """Build from the API's JSON."""
        return cls(
            attempt=data["attempt"],
            worker=data["worker"],
            started_at=_time(data.get("started_at")),
            finished_at=_time(data.get("finished_at")),
            outcome=data.get("outcome"),
            error=data.get("error"),
        )


@dataclass(frozen=True)
class Task:
    """A task and, once it ended, its outcome."""

    task_id: str
    #: None for a task run on its own (``tasks.run`` without a session).
    session_id: str | None
    service_id: str
    input: dict[str, Any]
    status: str
    result: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    created_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    #: The task's run: 1, then one more per retry (by hand or by its retry policy).
    run: int = 1
    #: Its time limit, allowed queue wait and retry policy (the deployment file's spelling).
    controls: dict[str, Any] | None = None
    #: When a ``retrying`` task runs again; when a task still queued times out instead.
    retry_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None
    #: Each run, first first (read one task to have them: lists leave them out).
    attempt_history: list[Attempt] = field(default_factory=list)
    #: Durable services: when the task's run, waiting for input, was let go; it holds no
    #: worker until the answer resumes it. None for a task that is not parked.
    parked_at: dt.datetime | None = None

    @property
    def done(self) -> bool:
        """True once the task ended."""
        return self.status in TERMINAL_STATUSES

    @property
    def parked(self) -> bool:
        """True while the task waits for input with no worker holding its run."""
        return self.parked_at is not None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Task:
        """Build from the API's JSON."""
        raw = data.get("input") or "{}"
        return cls(
            task_id=data["task_id"],
            session_id=data["session_id"],
            service_id=data["service_id"],
            input=json.loads(raw) if isinstance(raw, str) else raw,
            status=data["status"],
            result=data.get("result"),
            error=data.get("error"),
            attempts=data.get("attempts", 0),
            created_at=_time(data.get("created_at")),
            started_at=_time(data.get("started_at")),
            finished_at=_time(data.get("finished_at")),
            run=data.get("run", 1),
            controls=data.get("controls"),
            retry_at=_time(data.get("retry_at")),
            expires_at=_time(data.get("expires_at")),
            attempt_history=[Attempt.from_json(a) for a in data.get("attempt_history") or []],
            parked_at=_time(data.get("parked_at")),
        )


@dataclass(frozen=True)
class Step:
    """One execution of a durable task's step that ended: the step (its method), the event it
    took (its qualified class name), which execution of the step on that event it was
    (``attempt``: a step that waited for input runs again from its top once answered), the
    task's run, its times and how it ended (``returned <Event>``, ``failed: <Error>``,
    ``waits for input (<Event>)`` or ``collected its event``)."""

    step: str
    input: str
    attempt: int
    run: int
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    #: Seconds it took; None if its start is not known.
    duration: float | None
    outcome: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Step:
        """Build from the API's JSON."""
        return cls(
            step=data["step"],
            input=data.get("input") or "",
            attempt=data.get("attempt", 1),
            run=data.get("run", 1),
            started_at=_time(data.get("started_at")),
            ended_at=_time(data.get("ended_at")),
            duration=data.get("duration"),
            outcome=data.get("outcome") or "",
        )


@dataclass(frozen=True)
class Session:
    """A session and its tasks."""

    session_id: str
    task_ids: list[str]
    state: dict[str, Any]
    created_at: dt.datetime | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Session:
        """Build from the API's JSON."""
        return cls(
            session_id=data["session_id"],
            task_ids=list(data.get("task_ids") or []),
            state=dict(data.get("state") or {}),
            created_at=_time(data.get("created_at")),
        )


@dataclass(frozen=True)
class TaskResult:
    """LlamaDeploy's ``TaskResult``: the result as text, with the task's status and error."""

    task_id: str
    result: str
    status: str | None = None
    error: dict[str, Any] | None = None
    history: list[Any] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskResult:
        """Build from the API's JSON."""
        return cls(
            task_id=data["task_id"],
            result=data.get("result") or "",
            status=data.get("status"),
            error=data.get("error"),
            history=list(data.get("history") or []),
            data=dict(data.get("data") or {}),
        )


@dataclass(frozen=True)
class EventItem:
    """One event a task's workflow streamed: its sequence number, type and fields."""

    seq: int
    type: str
    qualified_name: str
    data: dict[str, Any]


@dataclass(frozen=True)
class EventDefinition:
    """LlamaDeploy's ``EventDefinition``: an event sent into a task, as the server took it."""

    event_obj_str: str
    service_id: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EventDefinition:
        """Build from the API's JSON."""
        return cls(event_obj_str=data["event_obj_str"], service_id=data.get("service_id"))
