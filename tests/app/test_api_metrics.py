"""``/metrics`` and ``/status/metrics``, scraped after a known batch of tasks on the embedded
server, and parsed as Prometheus parses them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app.factory import create_app
from app.models import Event, TaskStatus
from app.models.base import table_of
from app.server import Server
from config.settings import Settings
from tests.app.conftest import FAILING, assert_error, deployed, ok, poll, wait_for_task
from tests.conftest import HITL, QUICKSTART
from tests.support.metrics import Scrape

_EVENTS = table_of(Event)

ECHO = {"deployment": "QuickStart", "service": "echo_workflow"}
BOOM = {"deployment": "Failing", "service": "boom"}
ASK = {"deployment": "HumanInTheLoop", "service": "ask"}
STATUSES = [status.value for status in TaskStatus]
ENDED = [status.value for status in TaskStatus if status.terminal]


def scrape(client: FlaskClient, path: str = "/metrics") -> Scrape:
    response = client.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    return Scrape(response.get_data(as_text=True))


def run_tasks(client: FlaskClient, deployment: str, count: int) -> list[str]:
    """Create ``count`` tasks and wait until each ended; their ids."""
    url = f"/deployments/{deployment}/tasks"
    ids = [ok(client.post(f"{url}/create", json={"input": "{}"}))["task_id"] for _ in range(count)]
    for task_id in ids:
        wait_for_task(client, deployment, task_id)
    return ids


def stored_events(server: Server, task_ids: list[str], direction: str) -> int:
    """Events of these tasks in the events table, counted apart from the metrics' reads."""
    query = select(func.count()).where(
        _EVENTS.c.task_id.in_(task_ids), _EVENTS.c.direction == direction
    )
    with server.plane.db.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def answer(client: FlaskClient, task_id: str) -> None:
    """Send the waiting task of the human-in-the-loop example its answer."""
    event = {
        "__is_pydantic": True,
        "value": {"response": "42"},
        "qualified_name": "workflows.events.HumanResponseEvent",
    }
    body = {"service_id": "ask", "event_obj_str": json.dumps(event)}
    ok(client.post(f"/deployments/HumanInTheLoop/tasks/{task_id}/events", json=body))


@pytest.fixture
def batch(server: Server, client: FlaskClient) -> Iterator[dict[str, list[str]]]:
    """Three tasks that succeeded, one that failed and one that waits for input (answered
    after the test if it still waits, so that no run holds a worker thread)."""
    for path in (QUICKSTART, FAILING, HITL):
        deployed(client, path)
    ids = {"echo": run_tasks(client, "QuickStart", 3), "boom": run_tasks(client, "Failing", 1)}
    ask = ok(client.post("/deployments/HumanInTheLoop/tasks/create", json={}))["task_id"]
    url = f"/deployments/HumanInTheLoop/tasks/{ask}"
    poll(lambda: ok(client.get(url))["status"], lambda s: s == TaskStatus.WAITING_INPUT.value)
    ids["ask"] = [ask]
    yield ids
    if ok(client.get(url))["status"] == TaskStatus.WAITING_INPUT.value:
        answer(client, ask)
        wait_for_task(client, "HumanInTheLoop", ask)


def test_the_counts_of_a_known_batch_match_exactly(
    server: Server, client: FlaskClient, batch: dict[str, list[str]]
) -> None:
    # Given three tasks that succeeded, one that failed and one waiting for input
    # When the metrics are scraped
    m = scrape(client)
    # Then each service's tasks are counted once, by status, every status listed
    assert m("celeriac_tasks_created_total", **ECHO) == 3
    assert m("celeriac_tasks_created_total", **BOOM) == 1
    assert m("celeriac_tasks_created_total", **ASK) == 1
    expected = {
        "QuickStart": {"succeeded": 3},
        "Failing": {"failed": 1},
        "HumanInTheLoop": {"waiting_input": 1},
    }
    for service in (ECHO, BOOM, ASK):
        counts = expected[service["deployment"]]
        for status in STATUSES:
            assert m("celeriac_tasks", **service, status=status) == counts.get(status, 0)
        for status in ENDED:
            assert m("celeriac_tasks_ended_total", **service, status=status) == counts.get(
                status, 0
            )
    # And the durations count the ended runs, the queue waits every started one
    assert m("celeriac_task_duration_seconds_count", **ECHO) == 3
    assert m("celeriac_task_duration_seconds_count", **BOOM) == 1
    assert m("celeriac_task_duration_seconds_count", **ASK) == 0
    assert m("celeriac_task_queue_wait_seconds_count", **ECHO) == 3
    assert m("celeriac_task_queue_wait_seconds_count", **BOOM) == 1
    assert m("celeriac_task_queue_wait_seconds_count", **ASK) == 1
    # And the events are those stored, by direction
    assert m("celeriac_events_total", **ECHO, direction="out") == stored_events(
        server, batch["echo"], "out"
    )
    assert m("celeriac_events_total", **ASK, direction="out") == stored_events(
        server, batch["ask"], "out"
    )
    assert m("celeriac_events_total", **ASK, direction="in") == 0
    assert m("celeriac_events_total", **BOOM, direction="in") == 0
    # And each service has the embedded server's one live worker
    for service in (ECHO, BOOM, ASK):
        assert m("celeriac_workers", **service) == 1
    # And the types are Prometheus's
    assert m.types["celeriac_tasks_created"] == "counter"
    assert m.types["celeriac_tasks_ended"] == "counter"
    assert m.types["celeriac_tasks"] == "gauge"
    assert m.types["celeriac_task_duration_seconds"] == "histogram"
    assert m.types["celeriac_task_queue_wait_seconds"] == "histogram"
    assert m.types["celeriac_workers"] == "gauge"
    assert m.types["celeriac_events"] == "counter"


def test_the_histograms_are_cumulative_and_end_with_their_count(
    client: FlaskClient, batch: dict[str, list[str]]
) -> None:
    m = scrape(client)
    for name in ("celeriac_task_duration_seconds", "celeriac_task_queue_wait_seconds"):
        for service in (ECHO, BOOM, ASK):
            buckets = sorted(
                (float(labels["le"]), m(f"{name}_bucket", **labels))
                for labels in m.labels_of(f"{name}_bucket")
                if labels["deployment"] == service["deployment"]
            )
            counts = [count for _, count in buckets]
            assert counts == sorted(counts), (name, service, buckets)
            assert buckets[-1] == (float("inf"), m(f"{name}_count", **service))
            assert m(f"{name}_sum", **service) >= 0
    # The echo runs take milliseconds: all of them under the last finite bound
    assert m("celeriac_task_duration_seconds_bucket", **ECHO, le="3600.0") == 3


def test_counts_move_when_the_waiting_task_is_answered(
    server: Server, client: FlaskClient, batch: dict[str, list[str]]
) -> None:
    # Given the batch scraped once
    before = scrape(client)
    # When the waiting task gets its answer and ends
    [ask] = batch["ask"]
    answer(client, ask)
    wait_for_task(client, "HumanInTheLoop", ask)
    after = scrape(client)
    # Then it moved from waiting for input to succeeded, and its answer is an event in
    assert before("celeriac_tasks", **ASK, status="waiting_input") == 1
    assert after("celeriac_tasks", **ASK, status="waiting_input") == 0
    assert after("celeriac_tasks_ended_total", **ASK, status="succeeded") == 1
    assert after("celeriac_task_duration_seconds_count", **ASK) == 1
    assert after("celeriac_events_total", **ASK, direction="in") == 1
    assert after("celeriac_events_total", **ASK, direction="out") == stored_events(
        server, [ask], "out"
    )
    # And nothing else moved
    assert after("celeriac_tasks_created_total", **ASK) == 1
    assert after("celeriac_tasks_created_total", **ECHO) == 3


def test_a_service_without_tasks_has_its_series_at_zero(client: FlaskClient) -> None:
    # Given a deployment with no task yet
    deployed(client, QUICKSTART)
    # When the metrics are scraped
    m = scrape(client)
    # Then its series are there, at zero, so that its first task counts in rate()
    assert m("celeriac_tasks_created_total", **ECHO) == 0
    assert all(m("celeriac_tasks", **ECHO, status=status) == 0 for status in STATUSES)
    assert m("celeriac_task_duration_seconds_count", **ECHO) == 0
    assert m("celeriac_task_duration_seconds_bucket", **ECHO, le="+Inf") == 0
    assert m("celeriac_events_total", **ECHO, direction="out") == 0


def test_http_requests_are_counted_by_route_and_status(client: FlaskClient) -> None:
    # Given a first scrape
    deployed(client, QUICKSTART)
    before = scrape(client)
    # When a probe is called twice, a deployment read, and a path that does not exist
    for _ in range(2):
        ok(client.get("/healthz"))
    ok(client.get("/deployments/QuickStart"))
    assert_error(client.get("/no/such/path"), 404)
    after = scrape(client)

    # Then each is counted under its URL rule (without converters), method and status
    def moved(route: str, status: str) -> float:
        labels = {"route": route, "method": "GET", "status": status}
        return after("celeriac_http_requests_total", **labels) - before.get(
            "celeriac_http_requests_total", **labels
        )

    assert moved("/healthz", "200") == 2
    assert moved("/deployments/<deployment_name>", "200") == 1
    assert moved("unmatched", "404") == 1
    # And a method a client made up is counted as "other": no client grows the series
    assert client.open("/healthz", method="BREW").status_code == 405
    brewed = scrape(client)
    assert "BREW" not in brewed.text
    other = {"route": "unmatched", "method": "other", "status": "405"}
    assert brewed("celeriac_http_requests_total", **other) == 1
    # And the first scrape itself was counted by the second
    assert moved("/metrics", "200") == 1
    labels = {"route": "/healthz", "method": "GET"}
    assert after("celeriac_http_request_duration_seconds_count", **labels) >= 2


def test_status_metrics_answers_as_metrics_does(client: FlaskClient) -> None:
    deployed(client, QUICKSTART)
    run_tasks(client, "QuickStart", 2)
    # (The live workers count from heartbeats: the worker's first one may be recorded after
    # its tasks ended, on a loaded machine. Both scrapes come once it is.)
    poll(lambda: scrape(client)("celeriac_workers", **ECHO), until=lambda live: live == 1)
    # When LlamaDeploy's path is scraped, then its numbers are those of /metrics
    llama = scrape(client, "/status/metrics")
    ours = scrape(client)
    assert llama("celeriac_tasks_created_total", **ECHO) == 2
    from_database = {key: value for key, value in ours.samples.items() if "_http_" not in key[0]}
    differing = {
        key: (llama.samples.get(key), value)
        for key, value in from_database.items()
        if llama.samples.get(key) != value
    }
    assert not differing, differing


def test_openmetrics_is_served_to_who_asks_for_it(client: FlaskClient) -> None:
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.status_code == 200
    assert response.mimetype == "application/openmetrics-text"
    assert response.get_data(as_text=True).endswith("# EOF\n")


@pytest.fixture
def second_app(server: Server, settings: Settings) -> Iterator[Flask]:
    """Another API server on the same database, in the same process (as two servers
    behind a load balancer would be, but sharing one Python process and its libraries)."""
    app = create_app(settings)
    yield app
    app.extensions["celeriac"].close()


def test_two_servers_report_the_same_tasks_and_their_own_requests(
    client: FlaskClient, second_app: Flask
) -> None:
    # Given two tasks sent through the first server
    deployed(client, QUICKSTART)
    run_tasks(client, "QuickStart", 2)
    # When the second server (which served none of it) is scraped
    other = second_app.test_client()
    theirs = scrape(other)
    ours = scrape(client)
    # Then it reports the same tasks, read from the shared database
    assert theirs("celeriac_tasks_created_total", **ECHO) == 2
    assert theirs("celeriac_tasks_ended_total", **ECHO, status="succeeded") == 2
    assert theirs("celeriac_task_duration_seconds_count", **ECHO) == 2
    # And only its own requests: its registry is its own
    created = {"route": "/deployments/<deployment_name>/tasks/create", "method": "POST"}
    assert ours("celeriac_http_requests_total", **created, status="200") == 2
    assert theirs.get("celeriac_http_requests_total", **created, status="200") == 0
    # (a scrape is counted once answered: in the next scrape)
    scrape_route = {"route": "/metrics", "method": "GET", "status": "200"}
    assert theirs.get("celeriac_http_requests_total", **scrape_route) == 0
    assert scrape(other)("celeriac_http_requests_total", **scrape_route) == 1


def test_metrics_need_a_read_token_once_the_server_has_tokens(
    server: Server, client: FlaskClient
) -> None:
    # Given a server with tokens
    read = server.plane.tokens.create("read", None).token
    worker = server.plane.tokens.create("worker", None).token
    # Then a scrape without a token is refused, one with a read token (as Prometheus sends
    # it: a bearer token) is served, and a worker's token is not enough
    assert_error(client.get("/metrics"), 401)
    assert_error(client.get("/status/metrics"), 401)
    served = client.get("/metrics", headers={"Authorization": f"Bearer {read}"})
    assert served.status_code == 200
    assert_error(client.get("/metrics", headers={"Authorization": f"Bearer {worker}"}), 403)
