"""Idempotency keys across two API servers of one PostgreSQL database, with Redis, in real
processes: two clients that send the same request under one key at the same moment, each to
another server, get one task between them, which runs once; another request under a key
used on the other server is refused there, and stores nothing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.batches import Runs, assert_batch_complete
from tests.e2e.conftest import Platform, node
from tests.support.processes import free_port

pytestmark = pytest.mark.e2e

#: Keys sent by both clients at once: with ``tasks/create``, then with ``tasks/run``.
CREATED = 20
RAN = 6
#: Bound on any one request; only a failing test waits this long.
DEADLINE = 60.0


class Servers:
    """The two API servers' base URLs, and the log the workflow notes its runs in."""

    def __init__(self, a: str, b: str, runs: Runs) -> None:
        self.urls = (a, b)
        self.runs = runs

    def body(self, n: int) -> dict[str, Any]:
        """The request of counted task ``n``."""
        return {"input": json.dumps({"n": n, "seconds": 0.1, "log": str(self.runs.path)})}


@pytest.fixture
def servers(
    redis_url: str, make_platform: Callable[[str], Platform], counted: Path, tmp_path: Path
) -> tuple[Platform, Servers]:
    """Two API servers of one database and broker serving ``Counted``, the control-plane
    consumer and two service workers, all ready."""
    platform = make_platform(redis_url)
    platform.serve(counted, name="api-a")
    other = free_port()
    platform.serve(name="api-b", port=other)
    platform.control_plane()
    for name in ("w1", "w2"):
        platform.service_worker(name, deployment="Counted", service="work")
    platform.wait_for_workers("Counted", {node("w1"), node("w2")})
    platform.wait_for_consumer(node("control-plane"))
    runs = Runs(tmp_path / "runs.log")
    return platform, Servers(platform.server, f"http://127.0.0.1:{other}", runs)


def both_at_once(servers: Servers, route: str, n: int) -> list[httpx.Response]:
    """The request of task ``n`` under key ``key-n``, sent to both servers at the same moment."""
    start = threading.Barrier(2)

    def send(url: str) -> httpx.Response:
        start.wait(timeout=DEADLINE)
        return httpx.post(
            f"{url}/deployments/Counted/tasks/{route}",
            json=servers.body(n),
            headers={"Idempotency-Key": f"key-{n}"},
            timeout=DEADLINE,
        )

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(send, servers.urls))


def test_one_key_sent_to_two_api_servers_at_once_is_one_task_that_runs_once(
    servers: tuple[Platform, Servers],
) -> None:
    platform, two = servers
    # When, for each of 26 keys, two clients send the same request under it at once, one to
    # each API server (tasks/create for 20 of them, tasks/run for the others)
    began = time.monotonic()
    created = {n: both_at_once(two, "create", n) for n in range(CREATED)}
    ran = {n: both_at_once(two, "run", n) for n in range(CREATED, CREATED + RAN)}
    took = time.monotonic() - began
    # Then every answer is a success, and for each key one of the two is the replay
    answers = created | ran
    assert {r.status_code for pair in answers.values() for r in pair} == {200}, {
        n: [(r.status_code, r.text) for r in pair] for n, pair in answers.items()
    }
    for n, pair in answers.items():
        marks = sorted(str(r.headers.get("Idempotent-Replayed")) for r in pair)
        assert marks == ["None", "true"], (n, marks)
    # And both clients of a tasks/create got the same task, both of a tasks/run its result
    ids = {n: {r.json()["task_id"] for r in pair} for n, pair in created.items()}
    assert all(len(one) == 1 for one in ids.values()), ids
    assert {n: [r.json() for r in pair] for n, pair in ran.items()} == {
        n: [f"done {n}"] * 2 for n in ran
    }
    # And the database holds one task per key, the one each key names
    keys = dict(platform.query("SELECT key, task_id FROM idempotency_keys"))
    assert sorted(keys) == sorted(f"key-{n}" for n in answers)
    for n, one in ids.items():
        assert {keys[f"key-{n}"]} == one
    [[stored]] = platform.query("SELECT count(*) FROM tasks")
    assert stored == len(answers)
    # And each task succeeded, was recorded once, and ran once
    ordered = [keys[f"key-{n}"] for n in sorted(answers)]
    twice = assert_batch_complete(platform, ordered, two.runs)
    assert twice == {}
    assert {n: len(each) for n, each in two.runs.read().items()} == dict.fromkeys(answers, 1)
    print(f"\n{len(answers)} keys, each sent to both API servers at once: {took:.1f} s")


def test_a_key_used_on_one_api_server_refuses_another_request_on_the_other(
    servers: tuple[Platform, Servers],
) -> None:
    platform, two = servers
    a, b = two.urls
    url = "/deployments/Counted/tasks"
    key = {"Idempotency-Key": "order-1"}
    # Given a task created under a key through the first server
    first = httpx.post(f"{a}{url}/create", json=two.body(1), headers=key, timeout=DEADLINE)
    assert first.status_code == 200, first.text
    task_id = first.json()["task_id"]
    # When another request comes under the key through the second: another input, or the
    # same input by tasks/run
    others = [("create", two.body(2)), ("run", two.body(1))]
    for route, body in others:
        refused = httpx.post(f"{b}{url}/{route}", json=body, headers=key, timeout=DEADLINE)
        # Then it is refused, saying why, and nothing is stored
        assert refused.status_code == 409, refused.text
        assert refused.json()["message"].startswith(
            "Idempotency-Key 'order-1' was used with a different request"
        )
        assert list(refused.json()["errors"]) == ["Idempotency-Key"]
    # While the same request through the second server is the first one's task
    again = httpx.post(f"{b}{url}/create", json=two.body(1), headers=key, timeout=DEADLINE)
    assert (again.json()["task_id"], again.headers.get("Idempotent-Replayed")) == (task_id, "true")
    assert platform.query("SELECT id FROM tasks") == [(task_id,)]
    assert platform.query("SELECT key, task_id FROM idempotency_keys") == [("order-1", task_id)]
    platform.wait_for_tasks("Counted", [task_id])
    assert list(two.runs.read()) == [1]
