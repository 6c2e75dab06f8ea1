"""End to end on Redis and PostgreSQL: workers die, servers restart, wrong platforms are refused."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import QUICKSTART
from tests.e2e.conftest import (
    HEARTBEAT_INTERVAL,
    REDISPATCH_AFTER,
    TERMINAL,
    Platform,
    node,
    script,
)
from tests.support.processes import poll

#: Beyond three silent heartbeat intervals, how late a dead worker may still be listed.
SLACK = 2.0
#: Tasks per batch of the restart test, and how long each one sleeps.
BATCH = 40
NAP = 0.2


@pytest.fixture
def platform(redis_url: str, make_platform: Callable[[str], Platform]) -> Platform:
    """A distributed platform on Redis and PostgreSQL (nothing started yet)."""
    return make_platform(redis_url)


def in_flight(platform: Platform, ids: list[str]) -> int:
    """How many of these tasks have not ended yet."""
    tasks = platform.tasks("Sleepy")
    return sum(1 for i in ids if tasks.get(i, {}).get("status") not in TERMINAL)


def assert_each_ran_once(platform: Platform, tasks: dict[str, dict[str, Any]]) -> None:
    """Every task succeeded with its result, on one attempt, with one stored StopEvent."""
    failed = {i: t for i, t in tasks.items() if t["status"] != "succeeded"}
    assert not failed, failed
    results = {i: t["result"] for i, t in tasks.items()}
    assert sorted(results.values()) == sorted(f"slept {n}" for n in range(len(tasks)))
    attempts = {i: t["attempts"] for i, t in tasks.items() if t["attempts"] != 1}
    assert not attempts, f"tasks recorded more than once: {attempts}"
    ids = list(tasks)
    assert platform.stop_events(ids) == dict.fromkeys(ids, 1)


@pytest.mark.e2e
def test_a_killed_worker_leaves_the_registry_and_the_other_stays(platform: Platform) -> None:
    """kill -9 of one of two service workers: gone from /services within three heartbeats."""
    # Given two live service workers of the quick start
    platform.serve(QUICKSTART)
    platform.control_plane()
    doomed = platform.service_worker("w1")
    platform.service_worker("w2", celery_cli=True)
    platform.wait_for_workers("QuickStart", {node("w1"), node("w2")})

    # When one of them is killed without a chance to say goodbye
    killed_at = time.monotonic()
    doomed.kill()
    assert not doomed.alive()

    # Then it leaves /services within three heartbeat intervals (plus slack)
    live = poll(
        lambda: platform.workers_of("QuickStart"),
        lambda names: node("w1") not in names,
        3 * HEARTBEAT_INTERVAL + SLACK,
        "the killed worker gone from /services",
    )
    elapsed = time.monotonic() - killed_at
    assert elapsed <= 3 * HEARTBEAT_INTERVAL + SLACK + 1.0
    # And the other worker stays, still beating after another couple of intervals
    assert live == {node("w2")}
    time.sleep(2 * HEARTBEAT_INTERVAL)
    assert platform.live_workers("QuickStart") == {"echo_workflow": {node("w2")}}
    # And the dead one dropped out by silence: it never said goodbye
    stopped = platform.query("SELECT stopped_at FROM workers WHERE name = %s", (node("w1"),))
    assert stopped == [(None,)]
    # And the command line shows the service's one live worker with its last heartbeat
    shown = subprocess.run(
        [script("celeriac"), "deployments", "get", "QuickStart", "-o", "json"],
        env=platform.env(database=False),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    (service,) = json.loads(shown.stdout)["services"]
    assert service["queue"] == "celeriac.QuickStart.echo_workflow"
    [worker] = service["workers"]
    assert worker["name"] == node("w2")
    heartbeat = dt.datetime.fromisoformat(worker["last_heartbeat"])
    assert dt.datetime.now(dt.timezone.utc) - heartbeat < dt.timedelta(
        seconds=2 * HEARTBEAT_INTERVAL
    )


@pytest.mark.e2e
def test_restarts_of_the_api_server_and_the_control_plane_lose_and_repeat_nothing(
    platform: Platform, sleepy: Path
) -> None:
    """SIGTERM and restart the API server, then the control plane, with tasks in flight."""
    # Given the sleepy deployment served by two workers of two slots each
    api = platform.serve(sleepy)
    control = platform.control_plane()
    platform.service_worker("w1", deployment="Sleepy", service="nap", concurrency=2)
    platform.service_worker(
        "w2", deployment="Sleepy", service="nap", celery_cli=True, concurrency=2
    )
    platform.wait_for_workers("Sleepy", {node("w1"), node("w2")})
    platform.wait_for_consumer(node("control-plane"))

    # When a batch is queued and the API server is stopped and started again meanwhile
    first = platform.submit("Sleepy", [{"n": n, "seconds": NAP} for n in range(BATCH)])
    assert in_flight(platform, first) > 0, "the batch ended before the restart: too quick"
    assert api.terminate() == 0, api.output()
    api = platform.serve(sleepy)
    # Then every task of the batch ends, each run and recorded once
    assert_each_ran_once(platform, platform.wait_for_tasks("Sleepy", first))

    # When a second batch is queued and the control-plane consumer restarts meanwhile
    second = platform.submit("Sleepy", [{"n": n, "seconds": NAP} for n in range(BATCH)])
    assert in_flight(platform, second) > 0, "the batch ended before the restart: too quick"
    assert control.terminate() == 0, control.output()
    # Then, while it is down, nothing is recorded: the workers' reports wait in the broker
    stuck = in_flight(platform, second)
    assert stuck > 0
    time.sleep(BATCH * NAP / 4)
    assert in_flight(platform, second) == stuck
    # When it starts again
    control = platform.control_plane()
    # Then every task of it ends too, each run and recorded once
    assert_each_ran_once(platform, platform.wait_for_tasks("Sleepy", second))
    # And both workers took part, and every task names the worker that ran it
    by_worker = platform.workers_by_task(first + second)
    assert set(by_worker) == {node("w1"), node("w2")}, by_worker
    # And no process died on the way
    assert api.alive() and control.alive(), platform.processes.report()


@pytest.mark.e2e
def test_a_task_committed_by_an_api_server_that_died_before_publishing_runs_once(
    platform: Platform, sleepy: Path
) -> None:
    """The control plane sends again the step of a stored task that no message names."""
    # Given the sleepy deployment served by a worker, and its control-plane consumer
    platform.serve(sleepy)
    platform.control_plane()
    platform.service_worker("w1", deployment="Sleepy", service="nap")
    platform.wait_for_workers("Sleepy", {node("w1")})
    platform.wait_for_consumer(node("control-plane"))
    # When an API server commits a task and dies before publishing its step
    [(task_id,)] = platform.query(
        "INSERT INTO tasks (id, deployment_id, service, input, status, attempts, created_at, "
        "dispatched_at) SELECT 'orphan', id, 'nap', %s, 'queued', 0, now(), now() "
        "FROM deployments WHERE name = 'Sleepy' RETURNING id",
        (json.dumps({"n": 0, "seconds": 0}),),
    )
    # Then nothing runs it before the grace period ends
    time.sleep(REDISPATCH_AFTER / 2)
    assert platform.tasks("Sleepy")[task_id]["status"] == "queued"
    # And the control plane sends it within a sweep after it; it runs and is recorded once
    tasks = platform.wait_for_tasks("Sleepy", [task_id], timeout=REDISPATCH_AFTER * 4)
    assert_each_ran_once(platform, tasks)
    [(published,)] = platform.query("SELECT published_at FROM tasks WHERE id = %s", (task_id,))
    assert published is not None


def deployment_file(name: str, extra: str) -> str:
    """The quick start's YAML under another name, with ``extra`` top-level fields."""
    body = QUICKSTART.read_text().replace("name: QuickStart", f"name: {name}", 1)
    return body + extra


def post_yaml(platform: Platform, content: str) -> httpx.Response:
    """Deploy YAML text over HTTP; local sources are those of the quick start."""
    return platform.http.post(
        "/deployments/create",
        params={"base_path": str(QUICKSTART.parent)},
        files={"config_file": ("deployment.yml", content.encode())},
    )


def field_errors(response: httpx.Response) -> dict[str, list[str]]:
    """The ``errors`` of a 422, by field (flask-smorest may file them under a location)."""
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"code", "status", "message", "errors"}, body
    errors: dict[str, list[str]] = {}
    for key, value in body["errors"].items():
        errors.update(value if isinstance(value, dict) else {key: value})
    return errors


@pytest.mark.e2e
def test_a_deployment_naming_another_broker_or_a_key_value_store_is_refused(
    platform: Platform, redis_url: str
) -> None:
    """A distributed server refuses files whose message-queue or state store is not its own."""
    # Given an API server on Redis and PostgreSQL
    platform.serve()

    # When a file names RabbitMQ as its message queue
    refused = post_yaml(
        platform,
        deployment_file(
            "OnRabbit",
            "\nmessage-queue:\n  type: rabbitmq\n  url: amqp://guest:hunter2@127.0.0.1:5672//\n",
        ),
    )
    # Then it is refused at message-queue, naming both brokers, the password hidden
    errors = field_errors(refused)
    assert list(errors) == ["message-queue"], errors
    reason = " ".join(errors["message-queue"])
    assert "amqp://guest:***@127.0.0.1:5672//" in reason
    assert redis_url in reason
    assert "hunter2" not in refused.text

    # When a file keeps its state in Redis
    refused = post_yaml(
        platform,
        deployment_file("OnRedisStore", "").replace(
            "control-plane:\n  port: 8000\n",
            "control-plane:\n  port: 8000\n  state_store_uri: redis://127.0.0.1:6379/0\n",
        ),
    )
    # Then it is refused at control-plane.state_store_uri, with advice
    errors = field_errors(refused)
    assert list(errors) == ["control-plane.state_store_uri"], errors
    assert "SQLAlchemy URL" in " ".join(errors["control-plane.state_store_uri"])

    # And neither was stored
    listed = platform.http.get("/deployments/").json()
    assert [d["name"] for d in listed] == []

    # But a file naming the platform's own Redis (as localhost) is accepted
    own = redis_url.replace("127.0.0.1", "localhost")
    accepted = post_yaml(
        platform, deployment_file("OnOwnRedis", f"\nmessage-queue:\n  type: redis\n  url: {own}\n")
    )
    assert accepted.status_code == 200, accepted.text
    assert [d["name"] for d in platform.http.get("/deployments/").json()] == ["OnOwnRedis"]
