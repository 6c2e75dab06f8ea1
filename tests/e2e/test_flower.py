"""End to end: Flower monitors Celeriac's service workers and tasks through its HTTP API."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.app.conftest import FAILING
from tests.conftest import QUICKSTART
from tests.e2e.conftest import Platform, node, script
from tests.support.processes import READY_TIMEOUT, free_port, poll, require_module
from tests.support.servers import PrivateRabbitMQ

#: Flower's HTTP API answers only with credentials (or FLOWER_UNAUTHENTICATED_API).
AUTH = ("admin", "s3cret")
RUN_STEP = "celeriac.service.run_step"
#: The quick start's service queue, and its name on SQS (Kombu makes dots dashes there).
QUEUE = "celeriac.QuickStart.echo_workflow"
SQS_QUEUE = "celeriac-QuickStart-echo_workflow"
#: Tasks queued where nobody consumes them, for the Broker page to count.
BACKLOG = 7


class Flower:
    """A Flower watching the platform's broker, and a client of its HTTP API."""

    def __init__(self, platform: Platform, *options: str, name: str = "flower") -> None:
        self.port = free_port()
        self.process = platform.start(
            name,
            [
                script("celery"),
                *("-A", "workers.entry", "flower", f"--port={self.port}", "--address=127.0.0.1"),
                f"--basic-auth={AUTH[0]}:{AUTH[1]}",
                *options,
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

    def wait_for_worker(self, name: str) -> None:
        """Wait until Flower has asked the worker ``name`` which queues it consumes."""
        poll(
            lambda: self.get("/api/workers", refresh=1),
            lambda found: found is not None and bool(found.get(name, {}).get("active_queues")),
            READY_TIMEOUT,
            f"{name} and its queues in Flower's /api/workers",
        )

    def wait_for_length(self, queue: str, messages: int) -> dict[str, Any]:
        """Wait until Flower's ``/api/queues/length`` counts ``messages`` ready in ``queue``;
        the queue's entry."""
        found = poll(
            lambda: {
                q["name"]: q
                for q in (self.get("/api/queues/length") or {}).get("active_queues", [])
            },
            lambda lengths: lengths.get(queue, {}).get("messages_ready") == messages,
            READY_TIMEOUT,
            f"{messages} messages ready in {queue} in Flower's /api/queues/length",
        )
        return dict(found[queue])

    def broker_row(self, queue: str) -> dict[str, str]:
        """The row of ``queue`` on Flower's Broker page: its cells' text by column title."""
        response = self.page("/broker")
        assert response is not None and response.status_code == 200, response
        return broker_row(response.text, queue)

    def close(self) -> None:
        self.api.close()


def broker_row(html: str, queue: str) -> dict[str, str]:
    """The row of ``queue`` in the table of a Broker page, by column title (empty if none)."""

    def text(cell: str) -> str:
        return re.sub(r"<[^>]+>", "", cell).strip()

    titles = [text(t) for t in re.findall(r"<th[^>]*>(.*?)</th>", html, re.S)]
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", html, re.S):
        cells = [text(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        if cells and cells[0] == queue:
            return dict(zip(titles, cells, strict=False))
    return {}


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


@pytest.mark.e2e
def test_flower_broker_page_counts_a_service_queue_on_rabbitmq_with_and_without_management(
    managed_rabbitmq: PrivateRabbitMQ, make_platform: Callable[[str], Platform]
) -> None:
    """On RabbitMQ the Broker page and ``/api/queues/length`` count the messages waiting in a
    service's queue: through the management plugin given ``--broker_api``, and without it
    over AMQP (``workers.monitoring``), where Flower alone would list nothing."""
    # Given a platform on a RabbitMQ node of the test's own, which runs the management plugin
    require_module("flower")
    platform = make_platform(managed_rabbitmq.url)
    platform.serve(QUICKSTART)
    platform.control_plane()
    worker = platform.service_worker("w1")
    platform.wait_for_workers("QuickStart", {node("w1")})
    # And two Flowers: one given the plugin's HTTP API, one not
    managed = Flower(platform, f"--broker_api={managed_rabbitmq.management_api}", name="flower-api")
    plain = Flower(platform, name="flower")
    try:
        # When both learned the service worker's queues, and the worker stopped
        managed.wait_for_worker(node("w1"))
        plain.wait_for_worker(node("w1"))
        assert worker.terminate() == 0, worker.output()
        # And tasks are queued for the service, whose queue nobody consumes now
        platform.submit("QuickStart", [{"message": f"b{i}"} for i in range(BACKLOG)])

        # Then Flower given the plugin's API counts them, as the plugin does
        shown = managed.wait_for_length(QUEUE, BACKLOG)
        assert shown["messages"] == BACKLOG, shown
        assert shown["messages_unacknowledged"] == 0, shown
        assert shown["consumers"] == 0, shown
        # And Flower without it counts them too, over AMQP
        shown = plain.wait_for_length(QUEUE, BACKLOG)
        assert shown == {
            "name": QUEUE,
            "messages": BACKLOG,
            "messages_ready": BACKLOG,
            "consumers": 0,
        }, shown
        # And so does each one's Broker page
        for flower in (managed, plain):
            row = flower.broker_row(QUEUE)
            assert row.get("Messages") == str(BACKLOG), row
            assert row.get("Ready") == str(BACKLOG), row
            assert row.get("Consumers") == "0", row
        # And without the plugin's API the control plane's queue shows its consumer
        control = plain.wait_for_length("control_plane", 0)
        assert control["consumers"] >= 1, control
    finally:
        managed.close()
        plain.close()


@pytest.mark.e2e
def test_flower_broker_page_counts_a_service_queue_on_sqs(
    sqs_url: str, make_platform: Callable[[str], Platform]
) -> None:
    """On SQS the Broker page and ``/api/queues/length`` count the messages waiting in a
    service's queue (``workers.monitoring``: Flower alone answers 404), and see them go."""
    # Given a platform on SQS (a moto server) serving the quick start with no service worker
    require_module("flower")
    platform = make_platform(sqs_url)
    platform.serve(QUICKSTART)
    platform.control_plane()
    flower = Flower(platform)
    try:
        # When tasks are queued for the service, whose queue nobody consumes
        ids = platform.submit("QuickStart", [{"message": f"b{i}"} for i in range(BACKLOG)])

        # Then Flower's API counts them in the service's queue, under its SQS name
        shown = flower.wait_for_length(SQS_QUEUE, BACKLOG)
        assert shown == {
            "name": SQS_QUEUE,
            "messages": BACKLOG,
            "messages_ready": BACKLOG,
            "messages_unacknowledged": 0,
        }, shown
        # And so does its Broker page
        row = flower.broker_row(SQS_QUEUE)
        assert row.get("Messages") == str(BACKLOG), row
        assert row.get("Ready") == str(BACKLOG), row
        assert row.get("Unacked") == "0", row

        # When a service worker starts and runs them all
        platform.service_worker("w1")
        tasks = platform.wait_for_tasks("QuickStart", ids)
        assert {t["status"] for t in tasks.values()} == {"succeeded"}
        # Then the queue counts none
        shown = flower.wait_for_length(SQS_QUEUE, 0)
        assert shown["messages"] == 0, shown
    finally:
        flower.close()
