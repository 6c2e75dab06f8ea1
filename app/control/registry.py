"""The live service registry: which workers serve which service, from their heartbeats."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select

from app.control.deployments import find as find_deployment
from app.db import Database
from app.models import Worker
from app.models.base import utcnow

#: A worker silent for this many heartbeat intervals is taken as gone.
MISSED_BEATS = 3


@dataclass(frozen=True)
class ServiceView:
    """A service with the live workers that consume its queue."""

    name: str
    display_name: str
    queue: str
    workers: list[Worker]


class Registry:
    """Reads the workers table into per-service views."""

    def __init__(self, db: Database, heartbeat_interval: float) -> None:
        self._db = db
        self._horizon = dt.timedelta(seconds=heartbeat_interval * MISSED_BEATS)

    def live_workers(self) -> list[Worker]:
        """Workers heard from recently that did not say goodbye, by name."""
        with self._db.read() as db:
            query = (
                select(Worker)
                .where(Worker.last_seen >= utcnow() - self._horizon, Worker.stopped_at.is_(None))
                .order_by(Worker.name)
            )
            return list(db.scalars(query))

    def services(self, deployment: str) -> list[ServiceView]:
        """Each service of a deployment with its queue and live workers."""
        with self._db.read() as db:
            services = find_deployment(db, deployment, with_services=True).services
        workers = self.live_workers()
        return [
            ServiceView(
                name=s.name,
                display_name=s.display_name,
                queue=s.queue,
                workers=[w for w in workers if s.queue in w.queues],
            )
            for s in services
        ]
