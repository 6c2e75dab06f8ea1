"""A deployment at a glance: each service's queue and live workers, with counts of its tasks.

What the dashboard's first page shows, and what an operator asks first: is anything running,
is work piling up in a queue, did tasks fail lately. Counts come from the tasks table (the
statuses that have not ended are indexed; ended tasks are read for the last hour only).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import case, func, select

from app.control.deployments import find as find_deployment
from app.control.registry import Registry
from app.db import Database
from app.models import Task, TaskStatus, Worker
from app.models.base import utcnow

#: How far back the ended tasks are counted.
ENDED_WINDOW = dt.timedelta(hours=1)
#: How far back the rate of ended tasks is measured: short, so that it says what happens now.
RATE_WINDOW = dt.timedelta(minutes=5)

UNFINISHED = tuple(s for s in TaskStatus if not s.terminal)
ENDED = tuple(s for s in TaskStatus if s.terminal)


@dataclass(frozen=True)
class ServiceSummary:
    """One service: its queue, live workers and the counts of its tasks."""

    name: str
    display_name: str
    queue: str
    workers: list[Worker]
    #: Tasks that have not ended, by status (every unfinished status, 0 included).
    now: dict[str, int]
    #: Tasks that ended within :data:`ENDED_WINDOW`, by status (every ending, 0 included).
    last_hour: dict[str, int]
    #: Tasks that ended per minute, over :data:`RATE_WINDOW`.
    per_minute: float


class Overview:
    """Reads the summaries of a deployment's services."""

    def __init__(self, db: Database, registry: Registry) -> None:
        self._db = db
        self._registry = registry

    def services(self, deployment: str, now: dt.datetime | None = None) -> list[ServiceSummary]:
        """Each service of ``deployment`` with its workers and counts (:class:`NotFound`
        for an unknown deployment)."""
        now = now or utcnow()
        views = self._registry.services(deployment)
        unfinished: dict[str, dict[str, int]] = {}
        ended: dict[str, dict[str, int]] = {}
        recent: dict[str, int] = {}
        with self._db.read() as db:
            deployment_id = find_deployment(db, deployment).id
            rows = db.execute(
                select(Task.service, Task.status, func.count())
                .where(
                    Task.deployment_id == deployment_id,
                    Task.status.in_([s.value for s in UNFINISHED]),
                )
                .group_by(Task.service, Task.status)
            )
            for service, status, count in rows:
                unfinished.setdefault(service, {})[str(status)] = int(count)
            rate_since = now - RATE_WINDOW
            ended_rows = db.execute(
                select(
                    Task.service,
                    Task.status,
                    func.count(),
                    func.sum(case((Task.finished_at >= rate_since, 1), else_=0)),
                )
                .where(
                    Task.deployment_id == deployment_id,
                    Task.status.in_([s.value for s in ENDED]),
                    Task.finished_at >= now - ENDED_WINDOW,
                )
                .group_by(Task.service, Task.status)
            )
            for service, status, count, lately in ended_rows:
                ended.setdefault(service, {})[str(status)] = int(count)
                recent[service] = recent.get(service, 0) + int(lately or 0)
        minutes = RATE_WINDOW.total_seconds() / 60
        return [
            ServiceSummary(
                name=view.name,
                display_name=view.display_name,
                queue=view.queue,
                workers=view.workers,
                now=_all_of(UNFINISHED, unfinished.get(view.name, {})),
                last_hour=_all_of(ENDED, ended.get(view.name, {})),
                per_minute=round(recent.get(view.name, 0) / minutes, 2),
            )
            for view in views
        ]


def _all_of(statuses: tuple[TaskStatus, ...], counts: dict[str, int]) -> dict[str, int]:
    """``counts`` with every one of ``statuses``, in their order, 0 where none was counted."""
    return {status.value: counts.get(status.value, 0) for status in statuses}
