"""Durable services, in one process (memory:// and SQLite): journal, steps, park and resume.

The crash tests, which kill real worker processes on Redis and RabbitMQ, are in
``tests/e2e/test_durable.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app.models import Checkpoint, Event, JournalTick
from app.models.base import utcnow
from app.server import Server
from config.settings import Settings
from tests.app.conftest import deployed, ok, poll, wait_for_task
from tests.app.test_api_hitl import human_response
from tests.conftest import embedded_settings

SUITE = Path(__file__).resolve().parent / "workflows" / "durable" / "deployment.yml"
TASKS = "/deployments/DurableSuite/tasks"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded settings whose durable runs are let go after half a second of waiting."""
    return embedded_settings(tmp_path, worker_concurrency=2, release_after=0.5)


@pytest.fixture
def suite(client: FlaskClient) -> Iterator[FlaskClient]:
    deployed(client, SUITE)
    yield client


def run(client: FlaskClient, service: str, **kwargs: Any) -> dict[str, Any]:
    task: dict[str, Any] = ok(
        client.post(f"{TASKS}/create", json={"service_id": service, "input": json.dumps(kwargs)})
    )
    return task


def counts(log: Path) -> dict[str, int]:
    seen: dict[str, int] = {}
    for line in log.read_text().split():
        seen[line] = seen.get(line, 0) + 1
    return seen


def test_a_durable_task_lists_its_steps_with_their_times_and_outcomes(
    suite: FlaskClient, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"
    task = run(suite, "pipeline", log=str(log))
    done = wait_for_task(suite, "DurableSuite", task["task_id"])
    assert done["status"] == "succeeded", done
    assert done["result"] == {"total": 15}
    assert counts(log) == {"one": 1, "two": 1, "three": 1, "four": 1, "five": 1}

    steps = poll(lambda: ok(suite.get(f"{TASKS}/{task['task_id']}/steps")), lambda s: len(s) == 5)
    assert [s["step"] for s in steps] == ["one", "two", "three", "four", "five"]
    assert [s["outcome"] for s in steps] == [
        "returned Two",
        "returned Three",
        "returned Four",
        "returned Five",
        "returned StopEvent",
    ]
    # Events named as the user's folder spells them, not by the worker's private package
    assert [s["input"] for s in steps] == [
        "workflows.events.StartEvent",
        "counted.Two",
        "counted.Three",
        "counted.Four",
        "counted.Five",
    ]
    assert all(s["attempt"] == 1 and s["run"] == 1 for s in steps)
    for s in steps:
        assert s["started_at"] is not None and s["started_at"] <= s["ended_at"]
        assert s["duration"] >= 0


def test_a_task_of_a_service_that_is_not_durable_has_no_steps_listed(
    suite: FlaskClient,
) -> None:
    task = run(suite, "plain")
    assert wait_for_task(suite, "DurableSuite", task["task_id"])["status"] == "succeeded"
    assert ok(suite.get(f"{TASKS}/{task['task_id']}/steps")) == []


def test_the_steps_of_an_unknown_task_are_a_404(suite: FlaskClient) -> None:
    response = suite.get(f"{TASKS}/nope/steps")
    assert response.status_code == 404


def test_a_waiting_durable_run_is_parked_then_resumed_by_the_answer(
    suite: FlaskClient, server: Server, tmp_path: Path
) -> None:
    log = tmp_path / "ask.log"
    task = run(suite, "ask", log=str(log))
    url = f"{TASKS}/{task['task_id']}"
    # It asks, then is let go: still waiting, parked, and no worker thread holds it.
    parked = poll(lambda: ok(suite.get(url)), lambda t: t["parked_at"] is not None)
    assert parked["status"] == "waiting_input"
    poll(server.plane.celery.runtime.held, lambda held: held == [])

    ok(
        suite.post(
            f"{url}/events", json={"service_id": "ask", "event_obj_str": human_response("42")}
        )
    )
    done = wait_for_task(suite, "DurableSuite", task["task_id"])
    assert done["status"] == "succeeded", done
    assert done["result"] == {"answer": "42", "first": "done"}
    assert done["parked_at"] is None
    # ``first`` ran once; ``ask`` ran before the wait and again, from its top, with the answer.
    assert counts(log) == {"first": 1, "ask": 2}
    # Two attempts: the one let go, and the one the answer began; none lost.
    runs = ok(suite.get(f"{url}/attempts"))
    assert [r["outcome"] for r in runs] == ["parked", "succeeded"]
    timeline = ok(suite.get(f"{url}/timeline"))
    assert timeline[-1]["status"] == "succeeded"
    assert any("parked" in moment["note"] for moment in timeline)

    # The stream has no gap and no repeat: numbered 0, 1, 2... and ends with the result.
    with server.plane.db.read() as db:
        stored = db.execute(
            select(Event.seq, Event.type)
            .where(Event.task_id == task["task_id"], Event.direction == "out")
            .order_by(Event.seq)
        ).all()
    assert [seq for seq, _ in stored] == list(range(len(stored)))
    names = [kind for _, kind in stored]
    assert names.count("InputRequiredEvent") == 1
    assert names[-1] == "StopEvent"
    body = suite.get(f"{url}/events", query_string={"raw_event": "true"}).get_data(as_text=True)
    streamed = [json.loads(line) for line in body.splitlines() if line.strip()]
    assert [e["qualified_name"].rsplit(".", 1)[-1] for e in streamed] == names


def test_an_answer_sent_before_the_run_is_let_go_is_not_lost(
    suite: FlaskClient,
) -> None:
    task = run(suite, "ask")
    url = f"{TASKS}/{task['task_id']}"
    poll(lambda: ok(suite.get(url)), lambda t: t["status"] == "waiting_input")
    ok(
        suite.post(
            f"{url}/events", json={"service_id": "ask", "event_obj_str": human_response("now")}
        )
    )
    done = wait_for_task(suite, "DurableSuite", task["task_id"])
    assert done["result"] == {"answer": "now", "first": "done"}


def test_a_parked_task_is_compacted_to_its_snapshot(suite: FlaskClient, server: Server) -> None:
    task = run(suite, "ask")
    url = f"{TASKS}/{task['task_id']}"
    poll(lambda: ok(suite.get(url)), lambda t: t["parked_at"] is not None)

    def checkpoint() -> Any:
        with server.plane.db.read() as db:
            return db.get(Checkpoint, task["task_id"])

    kept = poll(checkpoint, lambda c: c is not None and c.snapshot is not None)
    with server.plane.db.read() as db:
        ticks = db.scalars(
            select(func.min(JournalTick.seq)).where(JournalTick.task_id == task["task_id"])
        ).one()
    # Every tick before the snapshot's number is gone.
    assert ticks is None or ticks >= kept.journal_seq
    assert kept.journal_seq > 0


def test_a_parked_run_whose_wait_times_out_is_resumed_then_by_the_control_plane(
    suite: FlaskClient,
) -> None:
    # A wait of 2 s, and runs let go after 0.5 s: the timeout falls while the task is parked
    task = run(suite, "impatient", wait=2.0)
    url = f"{TASKS}/{task['task_id']}"
    parked = poll(lambda: ok(suite.get(url)), lambda t: t["parked_at"] is not None)
    assert parked["status"] == "waiting_input"
    done = wait_for_task(suite, "DurableSuite", task["task_id"])
    assert done["status"] == "succeeded", done
    assert done["result"] == {"answer": None}
    # It waited its 2 s, not much more: the control plane woke it at the deadline.
    took = (
        dt.datetime.fromisoformat(done["finished_at"])
        - dt.datetime.fromisoformat(done["created_at"])
    ).total_seconds()
    assert 1.9 <= took < 5.0, took


def test_a_parked_task_cancelled_before_its_wait_times_out_is_never_woken(
    suite: FlaskClient, server: Server
) -> None:
    task = run(suite, "impatient", wait=1.0)
    url = f"{TASKS}/{task['task_id']}"
    poll(lambda: ok(suite.get(url)), lambda t: t["parked_at"] is not None)
    lifecycle = server.plane.lifecycle
    assert lifecycle.next_wake() is not None
    ok(suite.post(f"{url}/cancel"))
    # The deadline passes: nothing to wake, and nothing for the sweep to wait for.
    time.sleep(1.2)
    assert lifecycle.next_wake() is None
    assert lifecycle.wake_parked(utcnow()) == []
    assert ok(suite.get(url))["status"] == "cancelled"


def test_a_parked_task_cancelled_then_retried_is_not_marked_parked_while_it_runs_again(
    suite: FlaskClient, server: Server, tmp_path: Path
) -> None:
    # Given a durable task parked while it waits for an answer, then cancelled
    task = run(suite, "ask", log=str(tmp_path / "ask.log"))
    url = f"{TASKS}/{task['task_id']}"
    poll(lambda: ok(suite.get(url)), lambda t: t["parked_at"] is not None)
    ok(suite.post(f"{url}/cancel"))
    # When it is retried
    retried = ok(suite.post(f"{url}/retry"))
    # Then its new run is not marked parked (leases and the lost-run sweep skip parked
    # tasks: a mark left over would leave the new run unwatched) until it parks again
    assert retried["parked_at"] is None, retried
    again = poll(lambda: ok(suite.get(url)), lambda t: t["status"] == "waiting_input")
    assert again["run"] == 2
    ok(
        suite.post(
            f"{url}/events", json={"service_id": "ask", "event_obj_str": human_response("yes")}
        )
    )
    done = wait_for_task(suite, "DurableSuite", task["task_id"])
    assert done["status"] == "succeeded", done
    assert done["result"]["answer"] == "yes"


@pytest.mark.timing
def test_a_parked_task_past_its_time_limit_times_out(suite: FlaskClient, tmp_path: Path) -> None:
    # Given a durable task with a time limit of 1.5 s, parked while it waits for an answer
    task = ok(
        suite.post(
            f"{TASKS}/create",
            json={
                "service_id": "ask",
                "input": json.dumps({"log": str(tmp_path / "ask.log")}),
                "time_limit": 1.5,
            },
        )
    )
    url = f"{TASKS}/{task['task_id']}"
    poll(lambda: ok(suite.get(url)), lambda t: t["parked_at"] is not None)
    # When no answer comes: its limit counts the time parked, and the task times out
    ended = poll(lambda: ok(suite.get(url)), lambda t: t["status"] == "timed_out", timeout=10)
    assert ended["error"]["type"] == "celeriac.TimeLimitExceeded", ended
