"""Reports that arrive late or out of order: an ended task stays as it ended, and its event
stream neither skips an event still on its way nor ends before it.

The service worker is played by the test (``tests.support.reports``), so that each report
arrives exactly when the test wants it; the control plane is real, read through the HTTP API.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask.testing import FlaskClient

from app.control import events
from app.control.dispatch import Dispatcher
from app.control.events import EventLog, StreamedEvent
from app.control.plane import ControlPlane
from app.control.sendable import SendableEvents
from app.control.waiter import TaskWaiter
from app.server import Server
from tests.app.conftest import DEADLINE, deployed, ok
from tests.conftest import QUICKSTART
from tests.support.reports import STARTED_AT, WORKER, finished, report, started, streamed

TASKS = "/deployments/QuickStart/tasks"
#: Long enough for a stream to show what it would do next, were it wrong.
SETTLE = 0.3


@pytest.fixture
def client(workerless: Server) -> FlaskClient:
    """A client of the worker-less control plane, with the quick start deployed."""
    http = workerless.app.test_client()
    deployed(http, QUICKSTART)
    return http


def queued_task(client: FlaskClient) -> str:
    """A new task of the quick start, which no worker takes; its id."""
    task_id: str = ok(client.post(f"{TASKS}/create", json={"input": "{}"}))["task_id"]
    return task_id


def task(client: FlaskClient, task_id: str) -> dict[str, Any]:
    """The task as the API shows it."""
    body: dict[str, Any] = ok(client.get(f"{TASKS}/{task_id}"))
    return body


def sse_frames(client: FlaskClient, task_id: str) -> Iterator[dict[str, Any]]:
    """The task's server-sent events as they come, each ``{id?, event, data}``."""
    response = client.get(
        f"{TASKS}/{task_id}/events", headers={"Accept": "text/event-stream"}, buffered=False
    )
    assert response.status_code == 200
    buffer = ""
    for chunk in response.response:
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            fields = dict(
                line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
            )
            if "data" in fields:
                yield {**fields, "data": json.loads(fields["data"])}


def later(action: Any) -> threading.Timer:
    """Run ``action`` in another thread after ``SETTLE`` seconds."""
    timer = threading.Timer(SETTLE, action)
    timer.start()
    return timer


# -- an ended task stays as it ended ----------------------------------------------------------


@pytest.mark.parametrize(("succeeds", "status"), [(True, "succeeded"), (False, "failed")])
def test_a_start_reported_after_the_outcome_leaves_the_task_ended(
    workerless: Server, client: FlaskClient, succeeds: bool, status: str
) -> None:
    # Given a task whose outcome was recorded while its start report was still on its way
    task_id = queued_task(client)
    report(workerless.plane.celery, finished(task_id, ok=succeeds))
    before = task(client, task_id)
    assert before["status"] == status
    # When the start report arrives
    report(workerless.plane.celery, started(task_id))
    # Then the task is still ended as it was, its attempt counted once
    after = task(client, task_id)
    assert after["status"] == status
    assert (after["result"], after["error"]) == (before["result"], before["error"])
    assert after["finished_at"] == before["finished_at"]
    assert after["attempts"] == 1


def test_a_start_reported_after_the_question_leaves_the_task_waiting(
    workerless: Server, client: FlaskClient
) -> None:
    # Given a task that asked a person a question before its start report arrived
    task_id = queued_task(client)
    report(workerless.plane.celery, streamed(task_id, 0, input_required=True))
    assert task(client, task_id)["status"] == "waiting_input"
    # When the start report arrives
    report(workerless.plane.celery, started(task_id))
    # Then the task still waits for the answer
    assert task(client, task_id)["status"] == "waiting_input"


def test_repeated_start_and_end_reports_leave_one_attempt(
    workerless: Server, client: FlaskClient
) -> None:
    # Given a run whose start and end reports are each delivered twice, the end first
    task_id = queued_task(client)
    celery = workerless.plane.celery
    for message in (finished(task_id, ok=False), started(task_id)) * 2:
        report(celery, message)
    # Then the task shows one attempt, failed with the run's error, alone and in the task
    shown = task(client, task_id)
    [attempt] = shown["attempt_history"]
    assert ok(client.get(f"{TASKS}/{task_id}/attempts")) == [attempt]
    assert (shown["attempts"], attempt["attempt"], attempt["worker"]) == (1, 1, WORKER)
    assert (attempt["outcome"], attempt["error"]) == ("failed", shown["error"])


def test_a_second_run_shows_the_first_lost(workerless: Server, client: FlaskClient) -> None:
    # Given a run that began and was never heard of again (its worker died)
    task_id = queued_task(client)
    celery = workerless.plane.celery
    report(celery, started(task_id, at=STARTED_AT - 60))
    # When the task runs again and succeeds
    report(celery, started(task_id))
    report(celery, finished(task_id))
    # Then it shows two attempts: the first lost, the second succeeded
    shown = task(client, task_id)
    assert shown["attempts"] == 2
    first, second = shown["attempt_history"]
    assert (first["attempt"], first["outcome"], first["error"]["type"]) == (
        1,
        "lost",
        "AttemptLost",
    )
    assert first["finished_at"] is not None
    assert (second["attempt"], second["outcome"], second["error"]) == (2, "succeeded", None)


def test_a_second_run_that_ends_before_asking_again_still_ends_its_stream_with_the_outcome(
    workerless: Server, client: FlaskClient
) -> None:
    """A later run that had the answer waiting from its start may end without asking again:
    its StopEvent comes under the number of the first run's question, and must not be lost."""
    # Given a first run that asked a question (event 0), then was never heard of again
    task_id = queued_task(client)
    celery = workerless.plane.celery
    report(celery, started(task_id, at=STARTED_AT - 60))
    report(celery, streamed(task_id, 0, input_required=True))
    # When a second run ends at once, its StopEvent numbered 0 as its first event
    report(celery, started(task_id))
    report(celery, finished(task_id, stop_seq=0))
    # Then the task succeeded, and its events are the question, then the outcome
    shown = task(client, task_id)
    assert (shown["status"], shown["attempts"]) == ("succeeded", 2)
    frames = list(sse_frames(client, task_id))
    assert [(f.get("id"), f["data"].get("type")) for f in frames if f["event"] != "end"] == [
        ("0", "InputRequiredEvent"),
        ("1", "StopEvent"),
    ]


def test_a_run_whose_start_came_with_its_outcome_shows_its_attempt_after_a_lost_one(
    workerless: Server, client: FlaskClient
) -> None:
    # Given a run that began and was never heard of again (its worker died)
    task_id = queued_task(client)
    celery = workerless.plane.celery
    report(celery, started(task_id, at=STARTED_AT - 60))
    # When the task runs again, so quickly that its start is reported with its outcome
    report(celery, finished(task_id, started_reported=False))
    # Then it shows two attempts: the first lost, the second succeeded on its worker
    shown = task(client, task_id)
    assert (shown["status"], shown["attempts"]) == ("succeeded", 2)
    first, second = shown["attempt_history"]
    assert (first["attempt"], first["outcome"], first["error"]["type"]) == (
        1,
        "lost",
        "AttemptLost",
    )
    assert (second["attempt"], second["worker"], second["outcome"]) == (2, WORKER, "succeeded")


def test_a_run_shown_lost_that_reports_its_end_after_all_shows_its_own_outcome(
    workerless: Server, client: FlaskClient
) -> None:
    # Given a run taken for lost because a later run of its task began
    task_id = queued_task(client)
    celery = workerless.plane.celery
    report(celery, started(task_id, at=STARTED_AT - 60))
    report(celery, started(task_id))
    assert task(client, task_id)["attempt_history"][0]["outcome"] == "lost"
    # When its own end report arrives after all (its worker was only slow)
    report(celery, finished(task_id, ok=False, started_at=STARTED_AT - 60))
    # Then the attempt shows what its worker said, not the guess
    first, second = task(client, task_id)["attempt_history"]
    assert (first["attempt"], first["outcome"], first["error"]["type"]) == (
        1,
        "failed",
        "ValueError",
    )
    assert (second["attempt"], second["worker"]) == (2, WORKER)


@pytest.mark.parametrize(("succeeds", "status"), [(True, "succeeded"), (False, "failed")])
def test_a_question_reported_after_the_outcome_leaves_the_task_ended(
    workerless: Server, client: FlaskClient, succeeds: bool, status: str
) -> None:
    # Given a task that ended while the report of its question (its only event) was on its way
    task_id = queued_task(client)
    celery = workerless.plane.celery
    report(celery, started(task_id))
    report(celery, finished(task_id, ok=succeeds, event_count=1))
    before = task(client, task_id)
    # When the question arrives
    report(celery, streamed(task_id, 0, input_required=True))
    # Then the task is still ended as it was, and its stream holds the question
    after = task(client, task_id)
    assert after == before
    assert after["status"] == status
    frames = list(sse_frames(client, task_id))
    assert [f["event"] for f in frames] == ["InputRequiredEvent", "end"]
    assert frames[-1]["data"]["status"] == status


# -- a stream waits for what is still on its way ----------------------------------------------


def test_a_stream_waits_at_a_gap_for_the_missing_event(
    workerless: Server, client: FlaskClient
) -> None:
    # Given a running task whose events 0, 1 and 3 are stored, event 2 still on its way
    task_id = queued_task(client)
    celery = workerless.plane.celery
    report(celery, started(task_id))
    for seq in (0, 1, 3):
        report(celery, streamed(task_id, seq))
    frames = sse_frames(client, task_id)
    # When a client follows the stream, and event 2 arrives a moment after it reached the gap
    seen = [next(frames), next(frames)]
    timer = later(lambda: report(celery, streamed(task_id, 2)))
    seen.append(next(frames))
    timer.join()
    # Then it got the events in order, without skipping the missing one
    assert [int(f["id"]) for f in seen] == [0, 1, 2]
    # And, once the task ends, the rest and the end
    report(celery, finished(task_id, event_count=4))
    rest = list(frames)
    assert [f.get("id") for f in rest] == ["3", None]
    assert rest[-1]["data"]["status"] == "succeeded"


def test_a_stream_of_an_ended_task_waits_for_its_late_events(
    workerless: Server, client: FlaskClient
) -> None:
    # Given a task that ended after streaming 3 events, of which only event 0 is stored
    task_id = queued_task(client)
    celery = workerless.plane.celery
    report(celery, started(task_id))
    report(celery, streamed(task_id, 0))
    report(celery, finished(task_id, event_count=3))
    frames = sse_frames(client, task_id)
    assert int(next(frames)["id"]) == 0

    # When events 1 and 2 arrive a moment after the client read event 0
    def arrive() -> None:
        report(celery, streamed(task_id, 2))
        report(celery, streamed(task_id, 1))

    timer = later(arrive)
    rest = list(frames)
    timer.join()
    # Then the stream gave them, in order, before it ended
    assert [f.get("id") for f in rest] == ["1", "2", None]
    assert rest[-1]["event"] == "end"
    assert rest[-1]["data"]["status"] == "succeeded"


def rarely_polled_log(plane: ControlPlane, waiter: TaskWaiter) -> EventLog:
    """The control plane's event log, but re-reading the database only once a minute."""
    return EventLog(
        plane.db,
        plane.lifecycle,
        plane.tasks,
        waiter,
        Dispatcher(plane.celery),
        plane.outbox,
        SendableEvents(plane.descriptions),
        poll=60.0,
    )


def test_a_stream_is_woken_by_each_event_stored_not_by_its_next_poll(
    workerless: Server, client: FlaskClient
) -> None:
    # Given a running task, and a follower of its stream that re-reads the database only
    # once a minute, waiting at the stream's end
    task_id = queued_task(client)
    plane = workerless.plane
    report(plane.celery, started(task_id))
    log = rarely_polled_log(plane, plane.waiter)
    follower = log.follow(task_id)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(next, follower)
        time.sleep(SETTLE)
        # When the task streams an event
        report(plane.celery, streamed(task_id, 0))
        # Then the follower has it at once: storing the event woke it
        item = first.result(timeout=DEADLINE)
    follower.close()
    assert isinstance(item, StreamedEvent) and item.seq == 0


def test_a_stream_on_relayed_notifications_still_rereads_the_database_now_and_then(
    workerless: Server, client: FlaskClient
) -> None:
    # Given a running task, and a follower of its stream whose own poll is a minute, woken by
    # notifications relayed from other processes (PostgreSQL's, in production)
    task_id = queued_task(client)
    plane = workerless.plane
    report(plane.celery, started(task_id))
    waiter = TaskWaiter()
    waiter.set_relayed(True)
    log = rarely_polled_log(plane, waiter)
    follower = log.follow(task_id)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(next, follower)
        time.sleep(SETTLE)
        # When an event is stored and its notification never reaches this waiter
        plane.lifecycle.record_event(streamed(task_id, 0))
        # Then the follower still has it, from its safety-net re-read of the database
        item = first.result(timeout=DEADLINE)
    follower.close()
    assert isinstance(item, StreamedEvent) and item.seq == 0


def chunks(client: FlaskClient, url: str, **headers: str) -> Iterator[str]:
    """A streamed response's pieces as the server yields them."""
    response = client.get(url, headers=headers, buffered=False)
    assert response.status_code == 200, response.get_data(as_text=True)
    for chunk in response.response:
        yield chunk.decode() if isinstance(chunk, bytes) else chunk


@pytest.mark.parametrize(
    ("route", "accept", "keep_alive"),
    [
        ("tasks", "text/event-stream", ": keep-alive\n\n"),
        ("tasks", "application/x-ndjson", "\n"),
        ("handlers", "sse=true", ": keep-alive\n\n"),
        ("handlers", "sse=false", "\n"),
    ],
)
def test_a_quiet_stream_sends_keep_alives_then_ends_with_its_task(
    workerless: Server,
    client: FlaskClient,
    monkeypatch: pytest.MonkeyPatch,
    route: str,
    accept: str,
    keep_alive: str,
) -> None:
    # Given a running task that streams nothing for a while, and streams that send a
    # keep-alive after 1.2 s of silence (so that a client, or a proxy, knows it is alive)
    monkeypatch.setattr(events, "KEEP_ALIVE", 1.2)
    task_id = queued_task(client)
    celery = workerless.plane.celery
    report(celery, started(task_id))
    if route == "tasks":
        stream = chunks(client, f"{TASKS}/{task_id}/events", Accept=accept)
    else:
        stream = chunks(client, f"/deployments/QuickStart/events/{task_id}?{accept}")
    # When a client follows its stream (were no keep-alive to come, the task would end after
    # DEADLINE, and its stream with it)
    timer = threading.Timer(DEADLINE, lambda: report(celery, finished(task_id)))
    timer.start()
    opened = time.monotonic()
    quiet: list[tuple[str | None, float]] = []
    while len(quiet) < 3:
        chunk = next(stream, None)
        if chunk != "retry: 1000\n\n":  # how a task's SSE stream opens
            quiet.append((chunk, time.monotonic()))
    timer.cancel()
    # Then keep-alives come while the task is quiet, and nothing else, each after at least
    # 1.2 s of silence
    assert [c for c, _ in quiet] == [keep_alive] * 3
    times = [opened, *(at for _, at in quiet)]
    assert min(b - a for a, b in itertools.pairwise(times)) >= 1.2
    # And once the task streams an event and ends, the stream gives it and ends too
    report(celery, streamed(task_id, 0))
    report(celery, finished(task_id, event_count=1))
    rest = [c for c in stream if c != keep_alive]
    assert '"n": 0' in rest[0]
    # (a task's SSE stream closes with an end event that carries the task's status)
    if accept == "text/event-stream":
        assert rest[1:] == [f"event: end\ndata: {json.dumps(ended(task_id))}\n\n"]
    else:
        assert rest[1:] == []


def ended(task_id: str) -> dict[str, str]:
    return {"task_id": task_id, "status": "succeeded"}


def test_a_stream_of_an_ended_task_ends_after_a_grace_if_an_event_never_comes(
    workerless: Server, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a task that ended after streaming 3 events, of which event 1 never arrives (its
    # report was lost), and streams that wait 0.5 s for late events
    monkeypatch.setattr(events, "STRAGGLER_GRACE", 0.5)
    task_id = queued_task(client)
    celery = workerless.plane.celery
    report(celery, started(task_id))
    report(celery, streamed(task_id, 0))
    report(celery, streamed(task_id, 2))
    report(celery, finished(task_id, event_count=3))
    # When a client follows its stream
    began = time.monotonic()
    frames = list(sse_frames(client, task_id))
    # Then it gets the events up to the gap, waits the grace, and ends with the task's status
    assert [f.get("id") for f in frames] == ["0", None]
    assert frames[-1]["data"]["status"] == "succeeded"
    assert time.monotonic() - began >= 0.5


def test_last_event_id_minus_one_resumes_from_the_first_event(
    workerless: Server, client: FlaskClient
) -> None:
    # Given an ended task that streamed two events
    task_id = queued_task(client)
    celery = workerless.plane.celery
    report(celery, started(task_id))
    report(celery, streamed(task_id, 0))
    report(celery, streamed(task_id, 1))
    report(celery, finished(task_id, event_count=2))
    # When a client resumes its stream after the event number before the first
    response = client.get(
        f"{TASKS}/{task_id}/events",
        headers={"Accept": "text/event-stream", "Last-Event-ID": "-1"},
    )
    # Then it gets every event, then the end
    text = response.get_data(as_text=True)
    ids = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("id: ")]
    assert ids == ["0", "1"]
    assert "event: end" in text
