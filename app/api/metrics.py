"""``/metrics`` (and LlamaDeploy's ``/status/metrics``): Prometheus metrics of Celeriac.

Two sources, so that the numbers stay right with several API servers and workers:

- tasks, events and live workers are read from the shared database at each scrape
  (:class:`CensusCollector` over ``app.control.census``): every server answers the same;
- HTTP requests are counted by each server process for itself (as Prometheus expects of a
  target: it sums the servers it scrapes).

Each application has its own registry (not ``prometheus_client``'s global one), so that
several applications in one process (tests, the embedded server) keep their counts apart.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterable, Iterator

from flask import Flask, Response, current_app, g, request
from flask.views import MethodView
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from app.api.bodies import Blueprint
from app.control.census import (
    DURATION_BUCKETS,
    QUEUE_WAIT_BUCKETS,
    Census,
    CensusTaker,
    ServiceKey,
)
from app.control.census import Histogram as Observations
from app.models import EventDirection, TaskStatus

#: Where an application keeps its :class:`Metrics`.
EXTENSION = "celeriac.metrics"
#: The route label of a request that matched no route (a 404, a 405).
UNMATCHED = "unmatched"
#: Method labels; any other method a client makes up is counted as ``other``, so that no
#: client can grow the series without bound.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Upper bounds (seconds) of the buckets of an answer's latency: reads take milliseconds,
#: ``tasks/run`` waits for its task (two minutes at most, by default).
HTTP_BUCKETS = (0.005, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0, 30.0, 120.0)

blp = Blueprint("metrics", __name__, description="Prometheus metrics.")

_EXPOSITION = {
    200: {
        "description": "Metrics in Prometheus's text format (OpenMetrics when the `Accept` "
        "header asks for it).",
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            "application/openmetrics-text": {"schema": {"type": "string"}},
        },
    }
}


@blp.route("/metrics")
class Metrics(MethodView):
    """Prometheus metrics."""

    @blp.doc(responses=_EXPOSITION)
    def get(self) -> Response:
        """Tasks, events and live workers as the database holds them (the same on every
        server), and this server process's own HTTP requests."""
        return _exposition()


@blp.route("/status/metrics")
class StatusMetrics(MethodView):
    """Prometheus metrics, where LlamaDeploy's API server has them."""

    @blp.doc(responses=_EXPOSITION)
    def get(self) -> Response:
        """The same as ``/metrics``."""
        return _exposition()


def _exposition() -> Response:
    metrics: Instruments = current_app.extensions[EXTENSION]
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encode(metrics.registry), headers={"Content-Type": content_type})


class Instruments:
    """The registry of one application, and its counts of HTTP requests."""

    def __init__(self, taker: CensusTaker) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "celeriac_http_requests",
            "HTTP requests this server process answered, by route (its URL rule), method "
            "and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "celeriac_http_request_duration_seconds",
            "Seconds this server process took to start each answer (a stream's start, not "
            "its end), by route and method.",
            ["route", "method"],
            registry=self.registry,
            buckets=HTTP_BUCKETS,
        )
        self.registry.register(CensusCollector(taker))

    def install(self, app: Flask) -> None:
        """Count every request of ``app``, the refused and the failed ones too."""
        app.extensions[EXTENSION] = self
        # First of the hooks: a hook that refuses the request stops those after it.
        app.before_request_funcs.setdefault(None, []).insert(0, self._began)
        app.after_request(self._answered)

    def _began(self) -> None:
        g.celeriac_began = time.perf_counter()

    def _answered(self, response: Response) -> Response:
        rule = request.url_rule
        route = route_label(rule.rule) if rule is not None else UNMATCHED
        method = request.method if request.method in METHODS else "other"
        self.requests.labels(route, method, str(response.status_code)).inc()
        began = g.get("celeriac_began")
        if began is not None:
            self.latency.labels(route, method).observe(time.perf_counter() - began)
        return response


@functools.lru_cache(maxsize=256)
def route_label(rule: str) -> str:
    """A URL rule without its converters: ``/deployments/<deployment_name>/tasks``."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>:]+)>", r"<\1>", rule)


class CensusCollector:
    """Metric families read from the database at each scrape (``app.control.census``).

    A database that cannot be reached fails the scrape (503, from the error handlers): the
    token check before it needs the database too, and Prometheus then marks the target down.
    """

    def __init__(self, taker: CensusTaker) -> None:
        self._taker = taker

    def describe(self) -> Iterable[Metric]:
        """The families, without samples: registering them reads nothing."""
        return _Families().all()

    def collect(self) -> Iterator[Metric]:
        """The families with this scrape's samples."""
        families = _Families()
        families.fill(self._taker.census())
        return iter(families.all())


class _Families:
    """The families of the database's counts; empty until filled from a census."""

    def __init__(self) -> None:
        service = ["deployment", "service"]
        self.created = CounterMetricFamily(
            "celeriac_tasks_created",
            "Tasks created, by deployment and service (tasks of a deleted deployment are "
            "no longer counted).",
            labels=service,
        )
        self.ended = CounterMetricFamily(
            "celeriac_tasks_ended",
            "Tasks that ended, by deployment, service and status (a retried task counts "
            "again once it ends again, under its new status).",
            labels=[*service, "status"],
        )
        self.tasks = GaugeMetricFamily(
            "celeriac_tasks",
            "Tasks by their status now (queued, running, waiting_input, ...), by deployment "
            "and service.",
            labels=[*service, "status"],
        )
        self.duration = HistogramMetricFamily(
            "celeriac_task_duration_seconds",
            "Seconds from the start of a task's run to its end, of ended tasks that started.",
            labels=service,
        )
        self.queue_wait = HistogramMetricFamily(
            "celeriac_task_queue_wait_seconds",
            "Seconds from a task's dispatch to its service's queue (when its session's turn "
            "came, for a task that waited for it) to the start of its run, of started tasks.",
            labels=service,
        )
        self.workers = GaugeMetricFamily(
            "celeriac_workers",
            "Live workers that consume a service's queue (from their heartbeats).",
            labels=service,
        )
        self.events = CounterMetricFamily(
            "celeriac_events",
            "Events stored, by their task's deployment and service, and by direction "
            "(out: streamed by the workflow; in: sent into it).",
            labels=[*service, "direction"],
        )

    def all(self) -> list[Metric]:
        return [
            self.created,
            self.ended,
            self.tasks,
            self.duration,
            self.queue_wait,
            self.workers,
            self.events,
        ]

    def fill(self, census: Census) -> None:
        """Samples for every known service, zeros included (a series that appears only at
        its first task would lose that task to ``rate()``)."""
        statuses = [status.value for status in TaskStatus]
        ended = {status.value for status in TaskStatus if status.terminal}
        by_service: dict[ServiceKey, dict[str, int]] = {
            key: dict.fromkeys(statuses, 0) for key in census.services
        }
        for (deployment, service, status), count in census.tasks.items():
            by_service.setdefault((deployment, service), dict.fromkeys(statuses, 0))[status] = count
        for key, counts in sorted(by_service.items()):
            labels = list(key)
            self.created.add_metric(labels, sum(counts.values()))
            for status, count in counts.items():
                self.tasks.add_metric([*labels, status], count)
                if status in ended:
                    self.ended.add_metric([*labels, status], count)
            _observe(self.duration, labels, DURATION_BUCKETS, census.durations.get(key))
            _observe(self.queue_wait, labels, QUEUE_WAIT_BUCKETS, census.queue_waits.get(key))
            self.workers.add_metric(labels, census.workers.get(key, 0))
            for direction in EventDirection:
                count = census.events.get((*key, direction.value), 0)
                self.events.add_metric([*labels, direction.value], count)


def _observe(
    family: HistogramMetricFamily,
    labels: list[str],
    bounds: tuple[float, ...],
    seen: Observations | None,
) -> None:
    """Add one histogram series (every bucket at zero when nothing was observed)."""
    at_most = seen.at_most if seen is not None else (0,) * len(bounds)
    count, total = (seen.count, seen.total) if seen is not None else (0, 0.0)
    buckets = [(floatToGoString(b), n) for b, n in zip(bounds, at_most, strict=True)]
    family.add_metric(labels, [*buckets, ("+Inf", count)], total)
