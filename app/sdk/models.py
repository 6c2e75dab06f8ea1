"""Typed views of the API's answers."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any


def _time(value: str | None) -> dt.datetime | None:
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


@dataclass(frozen=True)
class Deployment:
    """A deployment."""

    name: str
    default_service: str | None = None
    version: int = 1
    services: list[Service] = field(default_factory=list)
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deployment:
        """Build from the API's JSON."""
        return cls(
            name=data["name"],
            default_service=data.get("default_service"),
            version=data.get("version", 1),
            services=[Service(**s) for s in data.get("services", [])],
            created_at=_time(data.get("created_at")),
            updated_at=_time(data.get("updated_at")),
        )


@dataclass(frozen=True)
class Task:
    """A task and, once it ended, its outcome."""

    task_id: str
    session_id: str
    service_id: str
    input: dict[str, Any]
    status: str
    result: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    created_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None

    @property
    def done(self) -> bool:
        """True once the task ended."""
        return self.status in {"succeeded", "failed", "cancelled"}

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
