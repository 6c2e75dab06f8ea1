"""End to end: concurrency caps in a distributed Celeriac (Redis or RabbitMQ, PostgreSQL, two
API servers, a control-plane consumer and two service workers of four slots each, all
processes).

Each run notes its start and end times in a file of its own; the most runs under way at
once is computed from those intervals, apart from Celeriac's records. Tasks are sent through
both API servers at once: the cap holds across them, and across the workers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Platform, node
from tests.support.overlap import most_at_once
from tests.support.processes import free_port, poll

pytestmark = pytest.mark.e2e

#: Bound on any one wait of these tests; only a failing test waits this long.
DEADLINE = 90.0

CAPPED_YAML = """\
name: Capped

control-plane: {}

default-service: work

services:
  work:
    name: Work
    source:
      type: local
      name: ./src
    path: workflow:noted_workflow
    celeriac:
      concurrency:
        limit: 3
  per_user:
    name: Work per user
    source:
      type: local
      name: ./src
    path: workflow:noted_workflow
    celeriac:
      concurrency:
        limit: 3
        key: user
        per-key: 1
"""

CAPPED_CODE = '''\
"""A workflow that notes when its run starts and ends, in a file of the run's own."""

import asyncio
import time

from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent


def note(path, word):
    with open(path, "a") as out:
        out.write(f"{word} {time.time():.6f}\\n")


class NotedWorkflow(Workflow):
    """Note the start in ``trace``, sleep ``seconds``, note the end (or the cancel)."""

    @step
    async def work(self, ev: StartEvent) -> StopEvent:
        """Note, sleep, note, reply."""
        note(ev.get("trace"), "start")
        try:
            await asyncio.sleep(float(ev.get("seconds", 1.0)))
        except asyncio.CancelledError:
            note(ev.get("trace"), "stopped")
            raise
        note(ev.get("trace"), "end")
        return StopEvent(result="done")


noted_workflow = NotedWorkflow(timeout=120)
'''


class Capped:
    """The platform serving the ``Capped`` deployment through two API servers."""

    def __init__(self, platform: Platform, folder: Path) -> None:
        self.platform = platform
        self.folder = folder
        self.servers = [platform.server, f"http://127.0.0.1:{free_port()}"]

    def start(self) -> None:
        (self.folder / "src").mkdir(parents=True)
        (self.folder / "src" / "workflow.py").write_text(CAPPED_CODE)
        path = self.folder / "deployment.yml"
        path.write_text(CAPPED_YAML)
        self.platform.serve(path, name="api-a")
        self.platform.serve(name="api-b", port=int(self.servers[1].rsplit(":", 1)[1]))
        self.platform.control_plane()
        for name in ("w1", "w2"):
            self.platform.service_worker(name, deployment="Capped", concurrency=4)
        self.platform.wait_for_workers("Capped", {node("w1"), node("w2")})

    def trace(self, name: str) -> Path:
        return self.folder / f"trace-{name}"

    def create(
        self, n: int, service: str, seconds: float, time_limit: float | None = None, **more: Any
    ) -> str:
        """Queue task ``n`` (``more`` in its input) through API server ``n % 2``; its id."""
        run_input = {"seconds": seconds, "trace": str(self.trace(str(n))), **more}
        body: dict[str, Any] = {"service_id": service, "input": json.dumps(run_input)}
        if time_limit is not None:
            body["time_limit"] = time_limit
        url = f"{self.servers[n % 2]}/deployments/Capped/tasks/create"
        response = httpx.post(url, json=body, timeout=30.0)
        assert response.status_code == 200, response.text
        return str(response.json()["task_id"])

    def create_all(self, service: str, seconds: float, inputs: list[dict[str, Any]]) -> list[str]:
        """Queue one task per input, eight at a time through both servers; ids in order."""
        with ThreadPoolExecutor(8) as pool:
            return list(
                pool.map(
                    lambda n: self.create(n, service, seconds, **inputs[n]), range(len(inputs))
                )
            )

    def interval(self, name: str) -> tuple[float, float]:
        """When run ``name`` started, and when it ended (or was stopped)."""
        times = dict(line.split() for line in self.trace(name).read_text().splitlines())
        return float(times["start"]), float(times.get("end", times.get("stopped", "inf")))

    def status(self, task_id: str) -> str:
        response = self.platform.http.get(f"/deployments/Capped/tasks/{task_id}")
        assert response.status_code == 200, response.text
        return str(response.json()["status"])


@pytest.fixture(params=["redis", "amqp"])
def capped(
    request: pytest.FixtureRequest, make_platform: Callable[[str], Platform], tmp_path: Path
) -> Capped:
    """The ``Capped`` deployment served by a started distributed platform, on Redis and on
    RabbitMQ."""
    broker_url: str = request.getfixturevalue(f"{request.param}_url")
    served = Capped(make_platform(broker_url), tmp_path / "capped")
    served.start()
    return served


def test_a_cap_of_three_holds_across_two_api_servers_and_two_workers(capped: Capped) -> None:
    # When twelve one-second tasks of a service capped at three are sent through both API
    # servers at once, to two workers of four slots each
    ids = capped.create_all("work", 1.0, [{} for _ in range(12)])
    # Then all twelve succeed
    tasks = capped.platform.wait_for_tasks("Capped", ids, timeout=DEADLINE)
    assert {task["status"] for task in tasks.values()} == {"succeeded"}
    # And, by the runs' own notes, exactly three ran at once at most
    spans = [capped.interval(str(n)) for n in range(12)]
    assert most_at_once(spans) == 3
    # (Both workers took some: the cap, not a worker's slots, held them back)
    assert set(capped.platform.workers_by_task(ids)) == {node("w1"), node("w2")}


def test_a_cap_per_key_holds_one_run_per_user_across_servers_and_workers(
    capped: Capped,
) -> None:
    # When twelve tasks of four users are sent through both servers, to a service capped at
    # three at once and one per user
    users = ["ann"] * 4 + ["bob"] * 4 + ["cat"] * 2 + ["dan"] * 2
    ids = capped.create_all("per_user", 0.5, [{"user": user} for user in users])
    # Then all succeed, never two of one user at once, and never more than three in all
    tasks = capped.platform.wait_for_tasks("Capped", ids, timeout=DEADLINE)
    assert {task["status"] for task in tasks.values()} == {"succeeded"}
    spans = [capped.interval(str(n)) for n in range(12)]
    for user in set(users):
        mine = [span for span, owner in zip(spans, users, strict=True) if owner == user]
        assert most_at_once(mine) == 1, user
    assert most_at_once(spans) == 3


def test_a_cancel_and_a_time_out_of_capped_runs_let_the_waiting_ones_start(
    capped: Capped,
) -> None:
    # Given the three slots taken by long runs, two of them with a time limit of four
    # seconds, and three tasks waiting, each of which holds its slot for six seconds
    long = capped.create(0, "work", 60.0)
    timed = [capped.create(n, "work", 60.0, time_limit=4.0) for n in (1, 2)]
    poll(
        lambda: [capped.status(t) for t in (long, *timed)],
        lambda found: found == ["running"] * 3,
        DEADLINE,
        "three long runs running",
    )
    waiting = [capped.create(n, "work", 6.0) for n in (3, 4, 5)]
    assert [capped.status(t) for t in waiting] == ["queued"] * 3
    # When the long run is cancelled
    cancelled = capped.platform.http.post(f"/deployments/Capped/tasks/{long}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    # Then the oldest waiting task runs in its slot at once, and the others still wait
    poll(
        lambda: [capped.status(t) for t in waiting],
        lambda found: found == ["running", "queued", "queued"],
        DEADLINE,
        "the oldest waiting task running in the cancelled run's slot",
    )
    assert [capped.status(t) for t in timed] == ["running"] * 2
    # And when the limited runs time out, the two others run in their slots
    for task_id in timed:
        poll(lambda t=task_id: capped.status(t), lambda s: s == "timed_out", DEADLINE, "a time-out")
    tasks = capped.platform.wait_for_tasks("Capped", waiting, timeout=DEADLINE)
    assert [tasks[t]["status"] for t in waiting] == ["succeeded"] * 3
    stops = [capped.interval(str(n))[1] for n in (1, 2)]
    assert min(capped.interval(str(n))[0] for n in (4, 5)) >= min(stops)
    # And no more than three ran at once (the cancelled run aside: its slot is given on as
    # the cancel is recorded, while its worker stops it)
    assert most_at_once(capped.interval(str(n)) for n in range(1, 6)) == 3
