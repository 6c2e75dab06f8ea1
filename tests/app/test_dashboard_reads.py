"""The reads the dashboard is made of: a deployment's summary, filtered task lists, timelines."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from app.control.overview import ENDED_WINDOW
from app.control.timelines import InputEvent, timeline
from app.models import Task, TaskAttempt
from app.models.base import utcnow
from app.server import Server
from tests.app.conftest import (
    FAILING,
    WORKFLOWS,
    asked,
    assert_error,
    deployed,
    field_errors,
    ok,
    poll,
    wait_for_task,
)
from tests.conftest import HITL, QUICKSTART
from tests.support.reports import finished, report, started, streamed

QUICK = "/deployments/QuickStart"
DURABLE = WORKFLOWS / "durable" / "deployment.yml"


@pytest.fixture
def played(workerless: Server) -> FlaskClient:
    """A client of a worker-less control plane (the test plays the worker), quick start
    deployed."""
    http = workerless.app.test_client()
    deployed(http, QUICKSTART)
    return http


def played_task(server: Server, client: FlaskClient, status: str, **body: Any) -> str:
    """A quick start task brought to ``status`` by played reports; its id."""
    task_id: str = ok(client.post(f"{QUICK}/tasks/create", json={"input": "{}", **body}))["task_id"]
    celery = server.plane.celery
    if status in ("running", "waiting_input"):
        report(celery, started(task_id))
    if status == "waiting_input":
        report(celery, streamed(task_id, 0, input_required=True))
    if status in ("succeeded", "failed"):
        report(celery, finished(task_id, ok=status == "succeeded", stop_seq=0))
    assert ok(client.get(f"{QUICK}/tasks/{task_id}"))["status"] == status
    return task_id


# -- summary ------------------------------------------------------------------------------------


def test_a_summary_counts_each_service_s_tasks_now_and_in_the_last_hour(
    workerless: Server, played: FlaskClient
) -> None:
    # Given tasks of every kind: two queued, one running, one waiting, two done, one failed
    for status in ("queued", "queued", "running", "waiting_input"):
        played_task(workerless, played, status)
    for status in ("succeeded", "succeeded", "failed"):
        played_task(workerless, played, status)
    # When the summary is read
    [service] = ok(played.get(f"{QUICK}/summary"))
    # Then it names the service and its queue, with no live worker (none started)
    assert service["name"] == "echo_workflow"
    assert service["queue"] == "celeriac.QuickStart.echo_workflow"
    assert service["workers"] == []
    # And counts what has not ended, and what ended in the last hour, every status named
    assert service["now"] == {"queued": 2, "running": 1, "waiting_input": 1, "retrying": 0}
    assert service["last_hour"] == {"succeeded": 2, "failed": 1, "cancelled": 0, "timed_out": 0}
    # And the rate is the ended tasks per minute over five minutes
    assert service["per_minute"] == pytest.approx(3 / 5)


def test_ended_tasks_leave_the_counts_after_an_hour(
    workerless: Server, played: FlaskClient
) -> None:
    played_task(workerless, played, "queued")
    played_task(workerless, played, "failed")
    # When the summary is read an hour and a minute later
    later = utcnow() + ENDED_WINDOW + dt.timedelta(minutes=1)
    [service] = workerless.plane.overview.services("QuickStart", now=later)
    # Then the failure is no longer counted, nor in the rate; the queued task still is
    assert service.last_hour["failed"] == 0
    assert service.per_minute == 0
    assert service.now["queued"] == 1


def test_a_summary_lists_the_live_workers(client: FlaskClient) -> None:
    deployed(client, QUICKSTART)
    # (the deployment's worker starts, then beats)
    [service] = poll(lambda: ok(client.get(f"{QUICK}/summary")), lambda s: s[0]["workers"])
    [worker] = service["workers"]
    assert set(worker) == {"name", "host", "pid", "started_at", "last_heartbeat"}
    assert "QuickStart" in worker["name"]


def test_the_summary_of_an_unknown_deployment_is_a_404(played: FlaskClient) -> None:
    body = assert_error(played.get("/deployments/Nope/summary"), 404)
    assert body["message"] == "deployment 'Nope' not found"


# -- task lists ---------------------------------------------------------------------------------


def ids(response: Any) -> list[str]:
    return [task["task_id"] for task in ok(response)]


def test_tasks_are_filtered_by_status_service_and_session(
    workerless: Server, played: FlaskClient
) -> None:
    # Given tasks of two statuses, two of them in one session
    session = ok(played.post(f"{QUICK}/sessions/create"))["session_id"]
    first = played_task(workerless, played, "failed", session_id=session)
    second = played_task(workerless, played, "succeeded", session_id=session)
    third = played_task(workerless, played, "failed")
    url = f"{QUICK}/tasks"
    # Then each filter, and their combinations, keep the tasks that match
    assert ids(played.get(url, query_string={"status": "failed"})) == [first, third]
    assert ids(played.get(url, query_string={"service_id": "echo_workflow"})) == [
        first,
        second,
        third,
    ]
    assert ids(played.get(url, query_string={"service_id": "other"})) == []
    assert ids(played.get(url, query_string={"session_id": session})) == [first, second]
    both = {"session_id": session, "status": "failed"}
    assert ids(played.get(url, query_string=both)) == [first]


def test_tasks_are_listed_newest_first_when_asked_a_page_at_a_time(
    workerless: Server, played: FlaskClient
) -> None:
    made = [played_task(workerless, played, "queued") for _ in range(3)]
    url = f"{QUICK}/tasks"
    # Oldest first stays the default (LlamaDeploy's clients read it so)
    assert ids(played.get(url)) == made
    assert ids(played.get(url, query_string={"order": "newest"})) == made[::-1]
    newest_page = {"order": "newest", "limit": 2, "offset": 2}
    assert ids(played.get(url, query_string=newest_page)) == [made[0]]


@pytest.mark.parametrize(
    ("query", "field"), [({"status": "done"}, "status"), ({"order": "random"}, "order")]
)
def test_a_wrong_filter_is_a_422_naming_it(
    played: FlaskClient, query: dict[str, str], field: str
) -> None:
    body = assert_error(played.get(f"{QUICK}/tasks", query_string=query), 422)
    assert field in field_errors(body)


# -- timelines ----------------------------------------------------------------------------------

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def a_task(status: str, **fields: Any) -> Task:
    return Task(id="t", service="echo", status=status, created_at=T0, **fields)


def a_run(number: int, began: float, ended: float | None, outcome: str | None) -> TaskAttempt:
    error = {"type": "ValueError", "message": "boom"} if outcome == "failed" else None
    return TaskAttempt(
        task_id="t",
        attempt=number,
        worker="w1@host",
        started_at=at(began),
        finished_at=None if ended is None else at(ended),
        outcome=outcome,
        error=error,
    )


def steps(moments: list[Any]) -> list[tuple[float, str]]:
    return [((m.at - T0).total_seconds(), m.status) for m in moments]


def test_a_timeline_tells_the_question_and_the_answer() -> None:
    task = a_task("succeeded", finished_at=at(5))
    runs = [a_run(1, 1, 5, "succeeded")]
    inputs = [
        InputEvent(at(2), "out", "InputRequiredEvent", {"prefix": "Ship it?"}),
        InputEvent(at(4), "in", "HumanResponseEvent", {"value": {"response": "yes"}}),
    ]
    moments = timeline(task, runs, inputs)
    assert steps(moments) == [
        (0, "queued"),
        (1, "running"),
        (2, "waiting_input"),
        (4, "running"),
        (5, "succeeded"),
    ]
    assert moments[1].note == "run 1 began on w1@host"
    assert moments[2].note == "asked: Ship it?"
    assert moments[3].note == "HumanResponseEvent sent in"
    # The run's end tells how the task ended: no second moment for it
    assert moments[4].note == "run 1 succeeded"


def test_a_failed_run_followed_by_another_is_a_retry() -> None:
    task = a_task("succeeded", finished_at=at(9))
    runs = [a_run(2, 6, 9, "succeeded"), a_run(1, 1, 2, "failed")]
    moments = timeline(task, runs, [])
    assert steps(moments) == [
        (0, "queued"),
        (1, "running"),
        (2, "retrying"),
        (6, "running"),
        (9, "succeeded"),
    ]
    assert moments[2].error == {"type": "ValueError", "message": "boom"}
    assert moments[2].note == "run 1 failed; the task runs again"


def test_a_retry_still_due_comes_last() -> None:
    error = {"type": "ValueError", "message": "boom"}
    task = a_task("retrying", retry_at=at(30), error=error)
    moments = timeline(task, [a_run(1, 1, 2, "failed")], [])
    assert steps(moments) == [(0, "queued"), (1, "running"), (2, "retrying"), (30, "queued")]
    assert moments[-1].note == "due to run again"


def test_a_task_cancelled_before_it_ran_ends_with_its_own_moment() -> None:
    error = {"type": "celeriac.Cancelled", "message": "cancelled by a client"}
    task = a_task("cancelled", finished_at=at(3), error=error)
    moments = timeline(task, [], [])
    assert steps(moments) == [(0, "queued"), (3, "cancelled")]
    assert moments[0].note == "created for service echo"
    assert moments[-1].note == "the task was cancelled"
    assert moments[-1].error == error


def test_a_long_question_is_cut() -> None:
    event = InputEvent(at(1), "out", "InputRequiredEvent", {"prefix": "x" * 1000})
    [_, asking] = timeline(a_task("waiting_input"), [], [event])
    assert len(asking.note) == len("asked: ") + 200
    assert asking.note.endswith("…")


def test_the_timeline_of_a_task_answered_by_a_person(server: Server, client: FlaskClient) -> None:
    # Given a human-in-the-loop task that asked, and was answered
    deployed(client, HITL)
    url = "/deployments/HumanInTheLoop/tasks"
    created = ok(client.post(f"{url}/create", json={"input": {"question": "Ship it?"}}))
    task_id = created["task_id"]
    asked(server, task_id)
    answer = {
        "__is_pydantic": True,
        "value": {"response": "yes"},
        "qualified_name": "HumanResponseEvent",
    }
    ok(client.post(f"{url}/{task_id}/events", json={"event_obj_str": json.dumps(answer)}))
    assert wait_for_task(client, "HumanInTheLoop", task_id)["result"] == "yes"
    # When its timeline is read, then it tells each step, in order
    moments = ok(client.get(f"{url}/{task_id}/timeline"))
    assert [m["status"] for m in moments] == [
        "queued",
        "running",
        "waiting_input",
        "running",
        "succeeded",
    ]
    assert moments[2]["note"] == "asked: Ship it?"
    assert all(set(m) == {"at", "status", "note", "error"} for m in moments)


def test_a_timeline_shows_errors_without_their_traceback(client: FlaskClient) -> None:
    # Given a failed task (its stored error has a traceback)
    deployed(client, FAILING)
    task_id = assert_error(client.post("/deployments/Failing/tasks/run", json={}), 502)["errors"][
        "task_id"
    ]
    moments = ok(client.get(f"/deployments/Failing/tasks/{task_id}/timeline"))
    # Then its failure is told, without the traceback (the caller is not an admin)
    assert moments[-1]["status"] == "failed"
    assert moments[-1]["error"] == {"type": "builtins.ValueError", "message": "boom"}


def test_the_timeline_of_an_unknown_task_is_a_404(played: FlaskClient) -> None:
    body = assert_error(played.get(f"{QUICK}/tasks/nope/timeline"), 404)
    assert body["message"] == "task 'nope' not found in deployment 'QuickStart'"


# -- a durable task's page ----------------------------------------------------------------------


def test_a_task_says_whether_it_is_durable_which_is_when_its_page_reads_steps(
    client: FlaskClient,
) -> None:
    """The task page asks for steps only when the task's controls say ``durable``: they do
    for a durable service's task, and a task of any other service has no steps."""
    deployed(client, DURABLE)
    tasks = "/deployments/DurableSuite/tasks"
    durable = ok(client.post(f"{tasks}/create", json={"service_id": "pipeline", "input": "{}"}))
    plain = ok(client.post(f"{tasks}/create", json={"service_id": "plain", "input": "{}"}))
    assert durable["controls"]["durable"] is True
    assert not (plain["controls"] or {}).get("durable")
    assert wait_for_task(client, "DurableSuite", plain["task_id"])["status"] == "succeeded"
    assert ok(client.get(f"{tasks}/{plain['task_id']}/steps")) == []
    assert wait_for_task(client, "DurableSuite", durable["task_id"])["status"] == "succeeded"
    steps = poll(
        lambda: ok(client.get(f"{tasks}/{durable['task_id']}/steps")), lambda s: len(s) == 5
    )
    # What each row of the page shows
    for step in steps:
        assert {"step", "input", "attempt", "run", "started_at", "duration", "outcome"} <= set(step)
    # Neither is parked: the page shows no badge
    assert ok(client.get(f"{tasks}/{durable['task_id']}"))["parked_at"] is None
