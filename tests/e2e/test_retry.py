"""End to end: a task that failed is retried in a distributed Celeriac (Redis, PostgreSQL,
processes): it runs again under its id, on a service worker of its own process."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.app.conftest import FLAKY
from tests.e2e.conftest import Platform, node
from tests.support.processes import poll

TASKS = "/deployments/Flaky/tasks"


@pytest.mark.e2e
def test_a_failed_task_retried_runs_again_on_a_worker_and_its_events_go_on(
    redis_url: str, make_platform: Callable[[str], Platform], tmp_path: Path
) -> None:
    # Given a distributed Celeriac serving the flaky workflow, and a task whose first run failed
    platform = make_platform(redis_url)
    platform.serve(FLAKY)
    platform.control_plane()
    platform.service_worker("w1", deployment="Flaky")
    platform.wait_for_workers("Flaky", {node("w1")})
    created = platform.http.post(
        f"{TASKS}/create", json={"input": {"counter": str(tmp_path / "runs")}}
    )
    assert created.status_code == 200, created.text
    task_id = created.json()["task_id"]

    def task() -> dict:
        response = platform.http.get(f"{TASKS}/{task_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    ended = {"succeeded", "failed", "cancelled"}
    failed = poll(task, lambda t: t["status"] in ended, 60.0, "the first run's end")
    assert (failed["status"], failed["error"]["message"]) == ("failed", "first run")
    # When it is retried
    retried = platform.http.post(f"{TASKS}/{task_id}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["task_id"] == task_id
    # Then it runs again and succeeds, both runs listed under the one task
    done = poll(task, lambda t: t["status"] in ended, 60.0, "the second run's end")
    assert (done["status"], done["result"], done["attempts"]) == ("succeeded", "ok after 2 runs", 2)
    runs = platform.http.get(f"{TASKS}/{task_id}/attempts").json()
    assert [(r["attempt"], r["outcome"]) for r in runs] == [(1, "failed"), (2, "succeeded")]
    assert {r["worker"] for r in runs} == {node("w1")}
    # And its stream reads the first run's events, then the second's, numbered on
    stream = platform.http.get(f"{TASKS}/{task_id}/events", params={"raw_event": "true"})
    events = [json.loads(line) for line in stream.text.splitlines() if line]
    assert [event["qualified_name"] for event in events] == [
        "workflow.RunEvent",
        "workflows.events.WorkflowFailedEvent",
        "workflow.RunEvent",
        "workflows.events.StopEvent",
    ]
    assert [events[0]["value"], events[2]["value"]] == [{"run": 1}, {"run": 2}]
    # A retry of the task that now succeeded is refused, and changes nothing
    again = platform.http.post(f"{TASKS}/{task_id}/retry")
    assert again.status_code == 409, again.text
    assert again.json()["errors"] == {"task_id": task_id, "status": "succeeded"}
    assert task() == done
