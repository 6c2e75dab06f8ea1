"""Counts of tasks, events and live workers, read from the database when metrics are scraped.

Every API server and worker shares one database, so what is read from it is the same
whichever server is asked, however many there are. Each read is one grouped statement (tasks
by deployment, service and status; started tasks by the buckets of both histograms; events
by their task's service): the database scans the rows once, and Python only adds up the few
groups. Deployment names are read last and matched by id, so that no statement joins them
row by row.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Dialect, Select, case, extract, func, select

from app.control.registry import Registry
from app.db import Database
from app.models import Deployment, Event, Service, Task
from app.models.base import table_of

_tasks = table_of(Task)
_events = table_of(Event)
_deployments = table_of(Deployment)
_services = table_of(Service)

#: Upper bounds (seconds) of the buckets of a run's duration: a quick echo to a long agent.
DURATION_BUCKETS: tuple[float, ...] = (
    *(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    *(30, 60, 300, 900, 3600),
)
#: Upper bounds (seconds) of the buckets of the wait before a worker takes a task.
QUEUE_WAIT_BUCKETS: tuple[float, ...] = (
    *(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
    *(2.5, 5, 10, 30, 60, 300),
)

#: (deployment, service)
ServiceKey = tuple[str, str]

#: The first version of each database that has ``WITH ... AS MATERIALIZED``.
_MATERIALIZES: dict[str, tuple[int, ...]] = {"sqlite": (3, 35), "postgresql": (12,)}


@dataclass(frozen=True)
class Histogram:
    """Observations of one series: how many are at most each bound, their count and sum."""

    bounds: tuple[float, ...]
    #: For each bound, the observations at most that bound (cumulative, as Prometheus's).
    at_most: tuple[int, ...]
    count: int
    total: float


@dataclass(frozen=True)
class Census:
    """What the database holds, at one scrape."""

    #: Every service of every deployment, whether or not it has tasks.
    services: tuple[ServiceKey, ...]
    #: (deployment, service, status) -> tasks with that status now.
    tasks: Mapping[tuple[str, str, str], int]
    #: Seconds from the start of a task's run to its end, of tasks that ended after a start.
    durations: Mapping[ServiceKey, Histogram]
    #: Seconds from a task's dispatch (else its creation) to its run's start, of started tasks.
    queue_waits: Mapping[ServiceKey, Histogram]
    #: (deployment, service, direction) -> events stored.
    events: Mapping[tuple[str, str, str], int]
    #: Live workers that consume each service's queue.
    workers: Mapping[ServiceKey, int]


class CensusTaker:
    """Reads a :class:`Census` from the database."""

    def __init__(self, db: Database, registry: Registry) -> None:
        self._db = db
        self._registry = registry
        #: Built at the first census, once the server's version is known.
        self._runs: Select[Any] | None = None

    def census(self) -> Census:
        """Read the counts (a few statements, not one snapshot: a task that moves meanwhile
        may be seen in one status by one statement and in the next by another)."""
        with self._db.peek() as connection:
            if self._runs is None:
                self._runs = _runs(connection.dialect)
            tasks = connection.execute(_TASK_COUNTS).all()
            runs = connection.execute(self._runs).all()
            events = connection.execute(_EVENT_COUNTS).all()
            # Last: a deployment deleted meanwhile took its tasks along, and is left out.
            services = connection.execute(_SERVICES).all()
        names = {deployment_id: name for deployment_id, name, _, _ in services}
        queues = {(name, service): queue for _, name, service, queue in services}
        live = [set(worker.queues) for worker in self._registry.live_workers()]
        waits = _Buckets(QUEUE_WAIT_BUCKETS)
        durations = _Buckets(DURATION_BUCKETS)
        for deployment_id, service, wait, run, started, waited, ended, took in runs:
            if deployment_id in names:
                key = (names[deployment_id], service)
                waits.add(key, wait, started, waited)
                if run is not None:
                    durations.add(key, run, ended, took)
        return Census(
            services=tuple(queues),
            tasks={(names[d], s, st): n for d, s, st, n in tasks if d in names},
            durations=durations.histograms(),
            queue_waits=waits.histograms(),
            events={(names[d], s, di): int(n) for d, s, di, n in events if d in names},
            workers={key: sum(queue in q for q in live) for key, queue in queues.items()},
        )


#: Each service with its deployment's id and name, and its queue.
_SERVICES = select(
    _deployments.c.id, _deployments.c.name, _services.c.name, _services.c.queue
).join_from(_services, _deployments, _services.c.deployment_id == _deployments.c.id)

_TASK_COUNTS = select(
    _tasks.c.deployment_id, _tasks.c.service, _tasks.c.status, func.count()
).group_by(_tasks.c.deployment_id, _tasks.c.service, _tasks.c.status)

_EVENT_COUNTS = (
    select(_tasks.c.deployment_id, _tasks.c.service, _events.c.direction, func.count())
    .join_from(_events, _tasks, _events.c.task_id == _tasks.c.id)
    .group_by(_tasks.c.deployment_id, _tasks.c.service, _events.c.direction)
)


def _runs(dialect: Dialect) -> Select[Any]:
    """Started tasks, in one scan: by deployment id, service, the bucket of their queue wait
    and that of their run's duration (NULL while it runs), with how many there are, their
    waits' sum, how many ended and their durations' sum."""
    name = dialect.name
    dispatched = func.coalesce(_tasks.c.dispatched_at, _tasks.c.created_at)
    observed = (
        select(
            _tasks.c.deployment_id,
            _tasks.c.service,
            _seconds(name, _tasks.c.started_at, dispatched).label("wait"),
            case(
                (_tasks.c.finished_at.is_(None), None),
                else_=_seconds(name, _tasks.c.finished_at, _tasks.c.started_at),
            ).label("run"),
        )
        .where(_tasks.c.started_at.is_not(None))
        .cte("observed")
    )
    version = tuple(part for part in dialect.server_version_info or () if isinstance(part, int))
    first = _MATERIALIZES.get(name)
    if first is not None and version >= first:
        # Else the database works the seconds out again for each bound they are compared
        # with: the scan takes twice as long on PostgreSQL, three times on SQLite.
        observed = observed.prefix_with("MATERIALIZED")
    wait, run = observed.c.wait, observed.c.run
    wait_bucket = _bucket(wait, QUEUE_WAIT_BUCKETS)
    run_bucket = _bucket(run, DURATION_BUCKETS)
    return select(
        observed.c.deployment_id,
        observed.c.service,
        wait_bucket,
        run_bucket,
        func.count(),
        func.coalesce(func.sum(wait), 0),
        func.count(run),
        func.coalesce(func.sum(run), 0),
    ).group_by(observed.c.deployment_id, observed.c.service, wait_bucket, run_bucket)


def _seconds(dialect: str, later: Any, earlier: Any) -> ColumnElement[Any]:
    """Seconds from ``earlier`` to ``later``, never below zero (hosts' clocks differ: a
    worker's start may be stamped a little before the API's dispatch)."""
    if dialect == "sqlite":
        # Timestamps are stored as ISO text in UTC; julianday reads them to the millisecond.
        return func.max((func.julianday(later) - func.julianday(earlier)) * 86400.0, 0.0)
    return func.greatest(extract("epoch", later - earlier), 0.0)


def _bucket(seconds: ColumnElement[Any], bounds: tuple[float, ...]) -> ColumnElement[Any]:
    """The index of the first bound that ``seconds`` is at most (``len(bounds)`` past the
    last; NULL for NULL)."""
    whens = ((seconds <= bound, index) for index, bound in enumerate(bounds))
    return case((seconds.is_(None), None), *whens, else_=len(bounds))


class _Buckets:
    """Adds up grouped observations into Prometheus's cumulative histograms."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self._counts: dict[ServiceKey, list[int]] = {}
        self._totals: dict[ServiceKey, float] = {}

    def add(self, key: ServiceKey, bucket: int, count: int, total: Any) -> None:
        """``count`` observations in ``bucket``, summing to ``total``."""
        self._counts.setdefault(key, [0] * (len(self.bounds) + 1))[bucket] += count
        self._totals[key] = self._totals.get(key, 0.0) + float(total)

    def histograms(self) -> dict[ServiceKey, Histogram]:
        """Each series' histogram."""
        histograms = {}
        for key, per_bucket in self._counts.items():
            at_most = tuple(itertools.accumulate(per_bucket[: len(self.bounds)]))
            histograms[key] = Histogram(self.bounds, at_most, sum(per_bucket), self._totals[key])
        return histograms
