"""Metrics and probes of the distributed mode: real processes on PostgreSQL and real brokers.

Two API servers on one database report the same tasks, events and workers (read from the
database when scraped), each with its own HTTP requests; ``/readyz`` reaches each broker.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import pytest

import migrations
from app.control.census import DURATION_BUCKETS, QUEUE_WAIT_BUCKETS, CensusTaker
from app.control.registry import Registry
from app.db import Database
from tests.app.conftest import FAILING
from tests.conftest import QUICKSTART
from tests.e2e.conftest import Platform, node
from tests.support.metrics import RUNS, Scrape, assert_histogram, seed_runs
from tests.support.processes import free_port, poll

pytestmark = pytest.mark.e2e

ECHO = {"deployment": "QuickStart", "service": "echo_workflow"}
BOOM = {"deployment": "Failing", "service": "boom"}
#: Tasks of each kind in the batch.
SUCCEEDING = 6
FAILING_TASKS = 2


def scrape(server: str) -> Scrape:
    response = httpx.get(f"{server}/metrics", timeout=30.0)
    assert response.status_code == 200, response.text
    return Scrape(response.text)


def create(server: str, deployment: str, kwargs: dict[str, str]) -> str:
    response = httpx.post(
        f"{server}/deployments/{deployment}/tasks/create",
        json={"input": json.dumps(kwargs)},
        timeout=30.0,
    )
    assert response.status_code == 200, response.text
    task_id: str = response.json()["task_id"]
    return task_id


@pytest.mark.parametrize("transport", ["redis"])
def test_two_api_servers_report_the_same_counts_from_the_database(
    broker_url: str, make_platform: Callable[[str], Platform]
) -> None:
    # Given two API servers on one PostgreSQL database, a control plane, two workers of the
    # quick start and one of a deployment whose workflow always fails
    platform = make_platform(broker_url)
    platform.serve(QUICKSTART, name="api-a")
    other = free_port()
    platform.serve(FAILING, name="api-b", port=other)
    servers = (platform.server, f"http://127.0.0.1:{other}")
    platform.control_plane()
    platform.service_worker("w1")
    platform.service_worker("w2")
    platform.service_worker("w-boom", deployment="Failing", service="boom")
    platform.wait_for_workers("QuickStart", {node("w1"), node("w2")})
    platform.wait_for_workers("Failing", {node("w-boom")})
    # When a batch is sent, the quick start's through one server, the failing through the other
    echo = [create(servers[0], "QuickStart", {"message": f"m{n}"}) for n in range(SUCCEEDING)]
    boom = [create(servers[1], "Failing", {}) for _ in range(FAILING_TASKS)]
    platform.wait_for_tasks("QuickStart", echo)
    platform.wait_for_tasks("Failing", boom)
    scrapes = [scrape(server) for server in servers]
    # Then both servers report the same counts, those of the batch
    for m in scrapes:
        assert m("celeriac_tasks_created_total", **ECHO) == SUCCEEDING
        assert m("celeriac_tasks_ended_total", **ECHO, status="succeeded") == SUCCEEDING
        assert m("celeriac_tasks_ended_total", **ECHO, status="failed") == 0
        assert m("celeriac_tasks_created_total", **BOOM) == FAILING_TASKS
        assert m("celeriac_tasks_ended_total", **BOOM, status="failed") == FAILING_TASKS
        assert m("celeriac_tasks", **ECHO, status="queued") == 0
        # And PostgreSQL's histograms count every run, with real durations
        assert m("celeriac_task_duration_seconds_count", **ECHO) == SUCCEEDING
        assert m("celeriac_task_queue_wait_seconds_count", **ECHO) == SUCCEEDING
        assert 0 < m("celeriac_task_duration_seconds_sum", **ECHO) < 60
        assert m("celeriac_task_duration_seconds_bucket", **ECHO, le="+Inf") == SUCCEEDING
        # And the events stored, and the live workers from their heartbeats
        [(stored,)] = platform.query(
            "SELECT count(*) FROM events e JOIN tasks t ON t.id = e.task_id "
            "WHERE t.id = ANY(%s) AND e.direction = 'out'",
            (echo,),
        )
        assert m("celeriac_events_total", **ECHO, direction="out") == stored
        assert m("celeriac_workers", **ECHO) == 2
        assert m("celeriac_workers", **BOOM) == 1
    # And each server counted only the requests it answered
    created = {"method": "POST", "status": "200"}
    route = {"route": "/deployments/<deployment_name>/tasks/create"}
    assert scrapes[0]("celeriac_http_requests_total", **route, **created) == SUCCEEDING
    assert scrapes[1]("celeriac_http_requests_total", **route, **created) == FAILING_TASKS


@pytest.mark.parametrize("transport", ["amqp", "redis", "sqs"])
def test_readyz_reaches_the_database_and_each_broker(
    broker_url: str, make_platform: Callable[[str], Platform]
) -> None:
    # Given an API server on PostgreSQL and the broker
    platform = make_platform(broker_url)
    platform.serve()
    # When it is probed, then both checks pass (the broker's first connection loads its
    # client library: started as the server starts, it may still be on its way), and every
    # answer comes within about a second
    answers: list[tuple[float, httpx.Response]] = []

    def probe() -> httpx.Response:
        began = time.monotonic()
        response = httpx.get(f"{platform.server}/readyz", timeout=10.0)
        answers.append((time.monotonic() - began, response))
        return response

    response = poll(probe, lambda r: r.status_code == 200, 10.0, "/readyz answering 200")
    checks = response.json()["checks"]
    assert {name: check["ok"] for name, check in checks.items()} == {
        "database": True,
        "broker": True,
    }
    assert all(took < 1.25 for took, _ in answers), answers
    assert len(answers) <= 2, [r.text for _, r in answers]
    assert httpx.get(f"{platform.server}/healthz").json() == {"status": "ok"}


def test_runs_fall_in_the_buckets_their_timestamps_say_on_postgresql(postgres_url: str) -> None:
    # Given tasks whose waits and runs are known, in PostgreSQL
    migrations.upgrade(postgres_url)
    db = Database(postgres_url)
    try:
        seed_runs(db)
        # When the census is read, then each is in the bucket of its seconds
        census = CensusTaker(db, Registry(db, heartbeat_interval=10.0)).census()
    finally:
        db.dispose()
    key = ("Timed", "svc")
    waits = [max(wait, 0.0) for wait, _, _ in RUNS]
    runs = [run for _, run, _ in RUNS if run is not None]
    assert_histogram(census.queue_waits[key], waits, QUEUE_WAIT_BUCKETS)
    assert_histogram(census.durations[key], runs, DURATION_BUCKETS)
    assert sum(census.tasks.values()) == len(RUNS) + 1
