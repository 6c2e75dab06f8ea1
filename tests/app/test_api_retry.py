"""``POST tasks/{id}/retry``: a task that failed runs again under its id, as a new attempt,
its events going on after the earlier run's; any other task is refused, and left as it was."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from app.models import Task
from app.models.base import table_of
from app.sdk import AsyncClient, Client, Conflict, NotFound
from app.server import Server
from tests.app.conftest import FLAKY, assert_error, deployed, ok, wait_for_task
from tests.app.test_api_auth import bearer, token
from tests.app.test_cli import on
from tests.app.test_late_reports import sse_frames
from tests.conftest import QUICKSTART
from tests.support.reports import finished, report, started, streamed

FLAKY_TASKS = "/deployments/Flaky/tasks"
QUICK_TASKS = "/deployments/QuickStart/tasks"
_tasks = table_of(Task)


def failed_flaky_task(client: FlaskClient, counter: Path) -> dict[str, Any]:
    """A task of the flaky deployment whose first run failed."""
    deployed(client, FLAKY)
    created = ok(client.post(f"{FLAKY_TASKS}/create", json={"input": {"counter": str(counter)}}))
    task = wait_for_task(client, "Flaky", created["task_id"])
    assert (task["status"], task["error"]["message"]) == ("failed", "first run")
    return task


def stream_of(client: FlaskClient, task_id: str) -> list[dict[str, Any]]:
    """The task's stream read to its end, as server-sent events (``id``, ``event``, ``data``)."""
    response = client.get(
        f"{FLAKY_TASKS}/{task_id}/events", headers={"Accept": "text/event-stream"}
    )
    assert response.status_code == 200
    frames = []
    for block in response.get_data(as_text=True).split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            frames.append({**fields, "data": json.loads(fields["data"])})
    return frames


# -- a failed task runs again -----------------------------------------------------------------


def test_a_failed_task_retried_runs_again_under_its_id_and_its_stream_goes_on(
    client: FlaskClient, tmp_path: Path
) -> None:
    # Given a task whose first run failed after streaming one event (and its failure)
    task = failed_flaky_task(client, tmp_path / "runs")
    task_id = task["task_id"]
    first_stream = stream_of(client, task_id)
    assert [(f.get("id"), f["event"]) for f in first_stream] == [
        ("0", "RunEvent"),
        ("1", "WorkflowFailedEvent"),
        (None, "end"),
    ]
    assert first_stream[0]["data"]["data"] == {"run": 1}
    assert first_stream[-1]["data"] == {"task_id": task_id, "status": "failed"}
    # When it is retried
    retried = ok(client.post(f"{FLAKY_TASKS}/{task_id}/retry"))
    # Then it is queued again under the same id, its outcome and end cleared, the same input
    # and service kept
    assert retried["task_id"] == task_id
    assert retried["status"] in ("queued", "running", "succeeded")  # its run may be quick
    assert (retried["input"], retried["service_id"]) == (task["input"], task["service_id"])
    assert retried["session_id"] == task["session_id"]
    if retried["status"] == "queued":
        assert (retried["result"], retried["error"], retried["finished_at"]) == (None, None, None)
    # And its second run succeeds
    done = wait_for_task(client, "Flaky", task_id)
    assert (done["status"], done["result"], done["error"]) == ("succeeded", "ok after 2 runs", None)
    assert done["attempts"] == 2
    # Both runs are listed, first first
    runs = ok(client.get(f"{FLAKY_TASKS}/{task_id}/attempts"))
    assert [(r["attempt"], r["outcome"]) for r in runs] == [(1, "failed"), (2, "succeeded")]
    assert runs[0]["error"]["message"] == "first run"
    # And the stream reads the first run's events, then the second's, then the end
    stream = stream_of(client, task_id)
    assert [(f["id"], f["event"]) for f in stream[:-1]] == [
        ("0", "RunEvent"),
        ("1", "WorkflowFailedEvent"),
        ("2", "RunEvent"),
        ("3", "StopEvent"),
    ]
    assert stream[:2] == first_stream[:2]
    assert stream[2]["data"]["data"] == {"run": 2}
    assert stream[3]["data"]["data"] == {"result": "ok after 2 runs"}
    assert stream[-1]["data"] == {"task_id": task_id, "status": "succeeded"}
    # And only one task was ever stored
    assert [t["task_id"] for t in ok(client.get(FLAKY_TASKS))] == [task_id]


def test_a_task_run_alone_is_retried_too(client: FlaskClient, tmp_path: Path) -> None:
    # Given a task of tasks/run (no session) that failed
    deployed(client, FLAKY)
    failed = client.post(f"{FLAKY_TASKS}/run", json={"input": {"counter": str(tmp_path / "n")}})
    task_id = assert_error(failed, 502)["errors"]["task_id"]
    # When it is retried, then it runs again, still in no session, and succeeds
    assert ok(client.post(f"{FLAKY_TASKS}/{task_id}/retry"))["session_id"] is None
    assert wait_for_task(client, "Flaky", task_id)["result"] == "ok after 2 runs"


# -- what cannot be retried -------------------------------------------------------------------


@pytest.fixture
def played(workerless: Server) -> FlaskClient:
    """A client of a worker-less control plane (the test plays the worker), quick start
    deployed."""
    http = workerless.app.test_client()
    deployed(http, QUICKSTART)
    return http


def played_task(server: Server, client: FlaskClient, status: str) -> str:
    """A task of the quick start brought to ``status`` by played reports; its id."""
    task_id: str = ok(client.post(f"{QUICK_TASKS}/create", json={"input": "{}"}))["task_id"]
    celery = server.plane.celery
    if status in ("running", "waiting_input"):
        report(celery, started(task_id))
    if status == "waiting_input":
        report(celery, streamed(task_id, 0, input_required=True))
    if status in ("succeeded", "failed"):
        report(celery, finished(task_id, ok=status == "succeeded", stop_seq=0))
    assert ok(client.get(f"{QUICK_TASKS}/{task_id}"))["status"] == status
    return task_id


def task_row(server: Server, task_id: str) -> dict[str, Any]:
    """Every column of the task's row."""
    with server.plane.db.engine.connect() as conn:
        return dict(conn.execute(select(_tasks).where(_tasks.c.id == task_id)).one()._mapping)


@pytest.mark.parametrize("status", ["queued", "running", "waiting_input", "succeeded"])
def test_a_task_that_did_not_fail_is_not_retried_and_stays_as_it_was(
    workerless: Server, played: FlaskClient, status: str
) -> None:
    # Given a task that did not fail
    task_id = played_task(workerless, played, status)
    before = task_row(workerless, task_id)
    # When it is retried, then the answer is 409 naming its status
    body = assert_error(played.post(f"{QUICK_TASKS}/{task_id}/retry"), 409)
    assert body["errors"] == {"task_id": task_id, "status": status}
    assert status in body["message"]
    # And nothing changed
    assert task_row(workerless, task_id) == before


def test_unknown_tasks_and_deployments_get_404(played: FlaskClient) -> None:
    body = assert_error(played.post(f"{QUICK_TASKS}/nope/retry"), 404)
    assert body["message"] == "task 'nope' not found in deployment 'QuickStart'"
    body = assert_error(played.post("/deployments/Nope/tasks/nope/retry"), 404)
    assert body["message"] == "deployment 'Nope' not found"


def test_a_task_of_another_deployment_is_not_found(
    workerless: Server, played: FlaskClient, tmp_path: Path
) -> None:
    # Given a failed task of the quick start, and another deployment
    task_id = played_task(workerless, played, "failed")
    before = task_row(workerless, task_id)
    deployed(played, FLAKY)
    # When it is retried through the other deployment, then 404, and nothing changed
    body = assert_error(played.post(f"{FLAKY_TASKS}/{task_id}/retry"), 404)
    assert body["message"] == f"task {task_id!r} not found in deployment 'Flaky'"
    assert task_row(workerless, task_id) == before


def test_the_retried_run_numbers_its_events_after_the_failed_runs_and_a_reader_waits_for_them(
    workerless: Server, played: FlaskClient
) -> None:
    # Given a task whose failed run streamed a note and ended with a StopEvent (0 and 1)
    celery = workerless.plane.celery
    task_id = ok(played.post(f"{QUICK_TASKS}/create", json={"input": "{}"}))["task_id"]
    report(celery, started(task_id))
    report(celery, streamed(task_id, 0))
    report(celery, finished(task_id, ok=False, stop_seq=1))
    # When it is retried
    retried = ok(played.post(f"{QUICK_TASKS}/{task_id}/retry"))
    assert retried["status"] == "queued"
    assert [retried[k] for k in ("result", "error", "started_at", "finished_at")] == [None] * 4
    assert retried["attempts"] == 1
    row = task_row(workerless, task_id)
    assert (row["first_seq"], row["event_count"], row["worker"], row["inbox"]) == (
        2,
        None,
        None,
        None,
    )
    # Then a reader of its stream gets the failed run's events and does not stop at its end
    frames = sse_frames(played, task_id)
    assert [next(frames)["id"], next(frames)["id"]] == ["0", "1"]
    # And when the new run (which numbers from 2) streams and ends, the reader gets those too
    second = 2_000_000_000.0

    def new_run() -> None:
        report(celery, started(task_id, at=second))
        report(celery, streamed(task_id, 2))
        report(celery, finished(task_id, started_at=second, stop_seq=3))

    runner = threading.Timer(0.3, new_run)
    runner.start()
    rest = list(frames)
    runner.join()
    assert [(f.get("id"), f["event"]) for f in rest] == [
        ("2", "Note"),
        ("3", "StopEvent"),
        (None, "end"),
    ]
    assert rest[-1]["data"] == {"task_id": task_id, "status": "succeeded"}
    attempts = ok(played.get(f"{QUICK_TASKS}/{task_id}/attempts"))
    assert [a["outcome"] for a in attempts] == ["failed", "succeeded"]


def test_a_task_of_a_busy_session_waits_its_turn(workerless: Server, played: FlaskClient) -> None:
    # Given a failed task of a session, and a later task of the session that runs
    celery = workerless.plane.celery
    failed_id = played_task(workerless, played, "failed")
    session = ok(played.get(f"{QUICK_TASKS}/{failed_id}"))["session_id"]
    later = ok(played.post(f"{QUICK_TASKS}/create?session_id={session}", json={"input": "{}"}))
    report(celery, started(later["task_id"]))
    # When the failed task is retried, it is queued but not sent: the session is busy
    assert ok(played.post(f"{QUICK_TASKS}/{failed_id}/retry"))["status"] == "queued"
    assert task_row(workerless, failed_id)["dispatched_at"] is None
    # And when the running task ends, the retried task's turn comes: it is sent
    done = finished(later["task_id"])
    report(celery, type(done)(**{**done.encode(), "keep_context": True}))
    assert task_row(workerless, failed_id)["dispatched_at"] is not None


def test_a_task_of_a_closed_session_is_not_retried(workerless: Server, played: FlaskClient) -> None:
    # Given a failed task whose session was closed
    task_id = played_task(workerless, played, "failed")
    session = ok(played.get(f"{QUICK_TASKS}/{task_id}"))["session_id"]
    assert played.delete(f"/deployments/QuickStart/sessions/{session}").status_code == 204
    before = task_row(workerless, task_id)
    # When it is retried, then 409 naming the session, and nothing changed
    body = assert_error(played.post(f"{QUICK_TASKS}/{task_id}/retry"), 409)
    assert body["errors"] == {"task_id": task_id, "session_id": session}
    assert "closed" in body["message"]
    assert task_row(workerless, task_id) == before


# -- scopes, SDK and CLI ----------------------------------------------------------------------


def test_a_read_token_may_not_retry(workerless: Server, played: FlaskClient) -> None:
    task_id = played_task(workerless, played, "failed")
    before = task_row(workerless, task_id)
    reader, runner = token(workerless, "read"), token(workerless, "run")
    # A read token gets 403, and nothing changed
    body = assert_error(played.post(f"{QUICK_TASKS}/{task_id}/retry", headers=bearer(reader)), 403)
    assert "run" in body["message"]
    assert task_row(workerless, task_id) == before
    # A run token retries it
    retried = played.post(f"{QUICK_TASKS}/{task_id}/retry", headers=bearer(runner))
    assert ok(retried)["status"] == "queued"


def test_the_sdk_and_the_cli_retry(live_server: str, client: FlaskClient, tmp_path: Path) -> None:
    # Given two failed tasks
    first = failed_flaky_task(client, tmp_path / "one")["task_id"]
    created = ok(
        client.post(f"{FLAKY_TASKS}/create", json={"input": {"counter": str(tmp_path / "two")}})
    )
    second = wait_for_task(client, "Flaky", created["task_id"])["task_id"]
    # The sync SDK retries the first; a retry of a task that succeeded is a Conflict
    with Client(live_server) as sdk:
        assert sdk.tasks.retry("Flaky", first).task_id == first
        assert wait_for_task(client, "Flaky", first)["status"] == "succeeded"
        with pytest.raises(Conflict) as refused:
            sdk.tasks.retry("Flaky", first)
        assert refused.value.errors == {"task_id": first, "status": "succeeded"}
        with pytest.raises(NotFound):
            sdk.tasks.retry("Flaky", "nope")

    # The async SDK the same
    async def async_retry() -> str:
        async with AsyncClient(live_server) as sdk:
            with pytest.raises(Conflict):
                await sdk.tasks.retry("Flaky", first)
            return (await sdk.tasks.retry("Flaky", second)).status

    assert asyncio.run(async_retry()) in ("queued", "running", "succeeded")
    assert wait_for_task(client, "Flaky", second)["result"] == "ok after 2 runs"
    # The CLI prints the retried task, and a refusal as an error
    refused_cli = on(live_server, "tasks", "retry", "-d", "Flaky", first)
    assert refused_cli.exit_code != 0
    assert "succeeded" in refused_cli.output
    third = ok(
        client.post(f"{FLAKY_TASKS}/create", json={"input": {"counter": str(tmp_path / "3")}})
    )["task_id"]
    wait_for_task(client, "Flaky", third)
    printed = on(live_server, "tasks", "retry", "-d", "Flaky", third)
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.output)["task_id"] == third
    assert wait_for_task(client, "Flaky", third)["result"] == "ok after 2 runs"
