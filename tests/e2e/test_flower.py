"""End to end: Flower monitors Celeriac's service workers and tasks through its HTTP API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.app.conftest import FAILING
from tests.conftest import QUICKSTART
from tests.e2e.conftest import Platform, node, script
from tests.support.processes import READY_TIMEOUT, free_port, poll, require_module

#: Flower's HTTP API answers only with credentials (or FLOWER_UNAUTHENTICATED_API).
AUTH = ("admin", "s3cret")
RUN_STEP = "celeriac.service.run_step"


class Flower:
    """A Flower watching the platform's broker, and a client of its HTTP API."""

    def __init__(self, platform: Platform) -> None:
        self.port = free_port()
        self.process = platform.start(
            "flower",
            [
                script("celery"),
                *("-A", "workers.entry", "flower", f"--port={self.port}", "--address=127.0.0.1"),
                f"--basic-auth={AUTH[0]}:{AUTH[1]}",
            ],
            database=False,
        )
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", auth=AUTH, timeout=30.0)

    def page(self, path: str, **params: Any) -> httpx.Response | None:
        """A page of Flower's, or None while it does not answer."""
        if not self.process.alive():
            pytest.fail(
                f"flower exited with {self.process.popen.returncode}:\n{self.process.output()}"
            )
        try:
            return self.api.get(path, params=params)
        except httpx.TransportError:
            return None

    def get(self, path: str, **params: Any) -> Any:
        """The JSON of a page of Flower's API, or None while it does not answer."""
        response = self.page(path, **params)
        return response.json() if response is not None and response.status_code == 200 else None

    def close(self) -> None:
        self.api.close()


@pytest.mark.e2e
def test_flower_lists_the_service_workers_and_their_run_step_tasks(
    redis_url: str, make_platform: Callable[[str], Platform]
) -> None:
    """Flower's /api/workers shows both service workers; /api/tasks shows each task's ids."""
    # Given a platform on Redis with two service workers, and Flower watching its broker
    require_module("flower")
    platform = make_platform(redis_url)
    platform.serve(QUICKSTART)
    platform.control_plane()
    platform.service_worker("w1")
    platform.service_worker("w2", celery_cli=True)
    workers = {node("w1"), node("w2")}
    platform.wait_for_workers("QuickStart", workers)
    flower = Flower(platform)
    get, port = flower.get, flower.port
    try:
        # When Flower has asked the workers who they are
        listed = poll(
            lambda: get("/api/workers", refresh=1),
            lambda found: found is not None and workers <= set(found),
            READY_TIMEOUT,
            "both service workers in Flower's /api/workers",
        )
        # Then it lists both service workers, each consuming the quick start's queue
        for name in workers:
            queues = {q["name"] for q in listed[name]["active_queues"]}
            assert "celeriac.QuickStart.echo_workflow" in queues, listed[name]
        # And its API refuses a client without credentials
        assert httpx.get(f"http://127.0.0.1:{port}/api/workers", timeout=10).status_code == 401

        def runs(ids: list[str]) -> dict[str, dict[str, Any]]:
            found = get("/api/tasks", taskname=RUN_STEP) or {}
            return {
                task_id: task
                for task_id in ids
                for task in found.values()
                if f"task_id={task_id!r}" in f"{task.get('args')} {task.get('kwargs')}"
                and task.get("state") == "SUCCESS"
            }

        # Workers send no task events until Flower switches them on (every few seconds, for
        # workers it has not seen yet): until one task shows, tasks run unseen.
        def probe() -> dict[str, dict[str, Any]]:
            [task_id] = platform.submit("QuickStart", [{"message": "probe"}])
            platform.wait_for_tasks("QuickStart", [task_id])
            return runs([task_id])

        poll(probe, bool, READY_TIMEOUT, "a task in Flower once it switched task events on")

        # When a few tasks run
        ids = platform.submit("QuickStart", [{"message": f"f{i}"} for i in range(6)])
        tasks = platform.wait_for_tasks("QuickStart", ids)
        assert {t["status"] for t in tasks.values()} == {"succeeded"}

        # Then Flower lists a successful run_step for each, naming its deployment, service, id
        seen = poll(
            lambda: runs(ids),
            lambda found: set(found) == set(ids),
            READY_TIMEOUT,
            "every task as a successful run_step in Flower's /api/tasks",
        )
        ran_by = dict(platform.query("SELECT id, worker FROM tasks WHERE id = ANY(%s)", (ids,)))
        for task_id, task in seen.items():
            assert task["name"] == RUN_STEP
            shown = f"{task['args']} {task['kwargs']}"
            assert "deployment='QuickStart'" in shown, task
            assert "service='echo_workflow'" in shown, task
            # And on the worker that the database says ran it
            assert task["worker"] == ran_by[task_id], task
    finally:
        flower.close()


@pytest.mark.e2e
def test_flower_shows_a_failed_workflow_as_failure_and_no_reports_and_its_broker_page(
    redis_url: str, make_platform: Callable[[str], Platform]
) -> None:
    """A run whose workflow raised is a FAILURE with its error; the control plane's reports
    (events, heartbeats, outcomes) are not listed as tasks; the Broker page lists queues."""
    # Given a platform on Redis serving a workflow that always raises, and Flower
    require_module("flower")
    platform = make_platform(redis_url)
    platform.serve(FAILING)
    platform.control_plane()
    platform.service_worker("w1", deployment="Failing", service="boom")
    platform.wait_for_workers("Failing", {node("w1")})
    flower = Flower(platform)
    try:
        poll(
            lambda: flower.get("/api/workers", refresh=1),
            lambda found: found is not None and node("w1") in found,
            READY_TIMEOUT,
            "the service worker in Flower's /api/workers",
        )

        # When tasks fail, until Flower has switched task events on and seen one
        def failure() -> dict[str, Any] | None:
            [task_id] = platform.submit("Failing", [{}])
            platform.wait_for_tasks("Failing", [task_id])
            found = flower.get("/api/tasks", taskname=RUN_STEP) or {}
            return next(
                (
                    task
                    for task in found.values()
                    if f"task_id={task_id!r}" in str(task.get("kwargs"))
                ),
                None,
            )

        shown = poll(failure, bool, READY_TIMEOUT, "a failed run_step in Flower")
        # Then Flower shows it failed, with the workflow's error
        assert shown["state"] == "FAILURE", shown
        assert "ValueError: boom" in shown["exception"], shown
        # And none of the control plane's reports shows as a task
        names = {task["name"] for task in (flower.get("/api/tasks") or {}).values()}
        assert names == {RUN_STEP}, names
        # And its Broker page lists the service's queue (the Redis URL is Flower's to read)
        page = poll(
            lambda: flower.page("/broker"),
            lambda response: response is not None and response.status_code == 200,
            READY_TIMEOUT,
            "Flower's broker page",
        )
        assert "celeriac.Failing.boom" in page.text
    finally:
        flower.close()
