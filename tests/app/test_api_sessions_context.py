"""Sessions keep their workflow Context between tasks, and run one task at a time."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from workflows.context.serializers import JsonSerializer
from workflows.events import HumanResponseEvent

from app.models import Event, Session
from app.server import Server
from tests.app.conftest import TERMINAL, asked, assert_error, deployed, ok, wait_for_task
from tests.conftest import EXAMPLES, QUICKSTART

#: Every test here ends with all its tasks ended: a task never stays queued.
pytestmark = pytest.mark.usefixtures("no_task_left_behind")

COUNTER = EXAMPLES / "counter" / "deployment.yml"
HITL = EXAMPLES / "hitl" / "deployment.yml"
_events = Event.__table__


@pytest.fixture
def hitl(client: FlaskClient) -> Iterator[FlaskClient]:
    """The client, with the human-in-the-loop example deployed; after the test, a task that
    still waits (the test failed early) gets an answer, so that no run holds a worker thread."""
    deployed(client, HITL)
    yield client
    for task in ok(client.get("/deployments/HumanInTheLoop/tasks", query_string={"limit": 1000})):
        if task["status"] not in TERMINAL:
            answer(client, task["task_id"], "left over", check=False)


@pytest.fixture
def counter(client: FlaskClient) -> FlaskClient:
    """The client, with the session counter deployed."""
    deployed(client, COUNTER)
    return client


def new_session(client: FlaskClient, deployment: str) -> str:
    """Create a session of ``deployment``; its id."""
    session_id: str = ok(client.post(f"/deployments/{deployment}/sessions/create"))["session_id"]
    return session_id


def run(client: FlaskClient, deployment: str, session_id: str, **kwargs: Any) -> Any:
    """``tasks/run`` in a session; the result."""
    response = client.post(
        f"/deployments/{deployment}/tasks/run",
        query_string={"session_id": session_id},
        json={"input": json.dumps(kwargs)},
    )
    return ok(response)


def create(
    client: FlaskClient, deployment: str, session_id: str, strategy: str | None = None
) -> dict[str, Any]:
    """``tasks/create`` in a session that must succeed; the task."""
    query = {"session_id": session_id}
    if strategy is not None:
        query["multitask_strategy"] = strategy
    task: dict[str, Any] = ok(
        client.post(f"/deployments/{deployment}/tasks/create", query_string=query, json={})
    )
    return task


def answer(client: FlaskClient, task_id: str, response: str, *, check: bool = True) -> None:
    """Answer a waiting task of the human-in-the-loop example."""
    event = JsonSerializer().serialize(HumanResponseEvent(response=response))  # type: ignore[call-arg]
    sent = client.post(
        f"/deployments/HumanInTheLoop/tasks/{task_id}/events",
        json={"service_id": "ask", "event_obj_str": event},
    )
    if check:
        ok(sent)


def status_of(client: FlaskClient, deployment: str, task_id: str) -> str:
    """A task's status now."""
    status: str = ok(client.get(f"/deployments/{deployment}/tasks/{task_id}"))["status"]
    return status


def stored_state(server: Server, session_id: str) -> Any:
    """The session's ``state`` column, read straight from the server's database."""
    with server.plane.db.engine.connect() as conn:
        return conn.scalar(select(Session.__table__.c.state).where(Session.id == session_id))


def values_of(data: Any, key: str) -> list[Any]:
    """Every value stored under ``key`` anywhere in a JSON document."""
    if isinstance(data, dict):
        found = [data[key]] if key in data else []
        return found + [v for value in data.values() for v in values_of(value, key)]
    if isinstance(data, list):
        return [v for item in data for v in values_of(item, key)]
    return []


def timestamp(value: str) -> dt.datetime:
    """An ISO 8601 timestamp with its timezone."""
    parsed = dt.datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


# -- the Context carries over ------------------------------------------------------------------


def test_counter_counts_within_a_session_and_starts_over_in_a_new_one(
    counter: FlaskClient,
) -> None:
    """LlamaDeploy scenario 3: "1", "2" in one session, then "1" in a new session."""
    # Given a session
    first = new_session(counter, "Counter")
    # When two tasks run in it, then one in a new session
    results = [run(counter, "Counter", first), run(counter, "Counter", first)]
    second = new_session(counter, "Counter")
    results.append(run(counter, "Counter", second))
    # Then the count carries over within a session only
    assert results == ["1", "2", "1"]
    # And the first session goes on from where it was
    assert run(counter, "Counter", first) == "3"


def test_each_task_of_a_session_keeps_its_own_result(counter: FlaskClient) -> None:
    """LlamaDeploy #401: a later task of a session never answers with an earlier one's result."""
    # Given three counter tasks and two quick-start tasks, each in a session of its own kind
    session_id = new_session(counter, "Counter")
    ids = [create(counter, "Counter", session_id)["task_id"] for _ in range(3)]
    deployed(counter, QUICKSTART)
    echo_session = new_session(counter, "QuickStart")
    echoes = [
        run(counter, "QuickStart", echo_session, message="first"),
        run(counter, "QuickStart", echo_session, message="second"),
    ]
    # Then every task has the result of its own run, by id and through LlamaDeploy's results
    assert [wait_for_task(counter, "Counter", i)["result"] for i in ids] == ["1", "2", "3"]
    for task_id, expected in zip(ids, ["1", "2", "3"], strict=True):
        url = f"/deployments/Counter/tasks/{task_id}/results"
        result = ok(counter.get(url, query_string={"session_id": session_id}))
        assert (result["task_id"], result["result"]) == (task_id, expected)
    assert echoes == ["Message received: first", "Message received: second"]


def test_stored_context_is_json(server: Server, counter: FlaskClient) -> None:
    """The session's Context is stored as plain JSON data, never as pickles."""
    # Given a session that ran two counter tasks
    session_id = new_session(counter, "Counter")
    assert stored_state(server, session_id) in ({}, None)
    run(counter, "Counter", session_id)
    run(counter, "Counter", session_id)
    # Then its state column holds a JSON object that survives a round trip
    state = stored_state(server, session_id)
    assert isinstance(state, dict) and state, state
    assert json.loads(json.dumps(state)) == state
    # And the store's counter is in it, as JSON
    assert values_of(state, "counter") == ["2"]
    # And the API shows the same state
    shown = ok(counter.get(f"/deployments/Counter/sessions/{session_id}"))["state"]
    assert shown == state


KEEPER_YAML = """\
name: Keeper
control-plane: {}
default-service: keep
services:
  keep:
    name: Keep
    source:
      type: local
      name: ./src
    path: workflow:keeper
"""

KEEPER_CODE = """\
from workflows import Context, Workflow, step
from workflows.events import StartEvent, StopEvent


class Keeper(Workflow):
    @step
    async def keep(self, ctx: Context, ev: StartEvent) -> StopEvent:
        before = await ctx.store.get("word", default=None)
        await ctx.store.set("word", ev.get("word"))
        if ev.get("with_a_set"):
            await ctx.store.set("shapes", {"circle", "square"})
        return StopEvent(result=before)


keeper = Keeper(timeout=10)
"""


def test_a_value_the_context_cannot_store_as_json_fails_the_task(
    client: FlaskClient, tmp_path: Path
) -> None:
    # Given a session whose first task stored a word in its Context
    (tmp_path / "keeper" / "src").mkdir(parents=True)
    (tmp_path / "keeper" / "src" / "workflow.py").write_text(KEEPER_CODE)
    (tmp_path / "keeper" / "deployment.yml").write_text(KEEPER_YAML)
    deployed(client, tmp_path / "keeper" / "deployment.yml")
    session_id = new_session(client, "Keeper")
    assert run(client, "Keeper", session_id, word="one") is None
    # When the next task stores a set in the Context's store, which JSON cannot hold
    task = ok(
        client.post(
            "/deployments/Keeper/tasks/create",
            query_string={"session_id": session_id},
            json={"input": json.dumps({"word": "two", "with_a_set": True})},
        )
    )
    # Then the task fails, saying so, rather than end with its Context silently lost
    failed = wait_for_task(client, "Keeper", task["task_id"])
    assert failed["status"] == "failed"
    assert failed["error"]["type"].endswith("WorkflowStateError")
    assert "cannot be stored as JSON" in failed["error"]["message"]
    assert "shapes" in failed["error"]["message"]
    # And the session goes on from the Context of its last successful task
    assert run(client, "Keeper", session_id, word="three") == "one"


# -- one task at a time ------------------------------------------------------------------------


def test_tasks_sent_at_once_run_one_after_the_other_in_order(counter: FlaskClient) -> None:
    # Given a session, when two tasks are created back to back (enqueue is the default)
    session_id = new_session(counter, "Counter")
    first = create(counter, "Counter", session_id)
    second = create(counter, "Counter", session_id, strategy="enqueue")
    # Then both finish, in the order they were sent, each seeing the other's Context
    done_first = wait_for_task(counter, "Counter", first["task_id"])
    done_second = wait_for_task(counter, "Counter", second["task_id"])
    assert (done_first["status"], done_second["status"]) == ("succeeded", "succeeded")
    assert (done_first["result"], done_second["result"]) == ("1", "2")
    # And the second started only after the first had finished
    assert timestamp(done_second["started_at"]) > timestamp(done_first["finished_at"])
    assert done_second["attempts"] == 1


def test_queued_tasks_keep_the_order_they_were_sent_in(counter: FlaskClient) -> None:
    # Given five tasks sent to one session without waiting
    session_id = new_session(counter, "Counter")
    ids = [create(counter, "Counter", session_id)["task_id"] for _ in range(5)]
    # Then they count 1 to 5 in the order they were sent, never overlapping
    done = [wait_for_task(counter, "Counter", i) for i in ids]
    assert [t["result"] for t in done] == ["1", "2", "3", "4", "5"]
    for before, after in itertools.pairwise(done):
        assert timestamp(after["started_at"]) > timestamp(before["finished_at"])


def test_queued_task_waits_for_the_busy_session(server: Server, hitl: FlaskClient) -> None:
    # Given a session whose task waits for a human
    session_id = new_session(hitl, "HumanInTheLoop")
    busy = create(hitl, "HumanInTheLoop", session_id)
    asked(server, busy["task_id"])
    # When another task is sent to it
    queued = create(hitl, "HumanInTheLoop", session_id)
    # Then it stays queued, not started, while the first one waits
    task = ok(hitl.get(f"/deployments/HumanInTheLoop/tasks/{queued['task_id']}"))
    assert (task["status"], task["started_at"], task["attempts"]) == ("queued", None, 0)
    # When the first is answered, the second starts and asks in turn
    answer(hitl, busy["task_id"], "first")
    assert wait_for_task(hitl, "HumanInTheLoop", busy["task_id"])["result"] == "first"
    asked(server, queued["task_id"])
    answer(hitl, queued["task_id"], "second")
    assert wait_for_task(hitl, "HumanInTheLoop", queued["task_id"])["result"] == "second"


def test_reject_refuses_a_task_while_the_session_is_busy(server: Server, hitl: FlaskClient) -> None:
    # Given a session busy with a task that waits for a human
    session_id = new_session(hitl, "HumanInTheLoop")
    busy = create(hitl, "HumanInTheLoop", session_id)
    asked(server, busy["task_id"])
    # When another task is sent with multitask_strategy=reject, by create and by run
    query = {"session_id": session_id, "multitask_strategy": "reject"}
    refused = [
        hitl.post(f"/deployments/HumanInTheLoop/tasks/{how}", query_string=query, json={})
        for how in ("create", "run")
    ]
    # Then both are refused with 409, naming the task that holds the session
    for response in refused:
        body = assert_error(response, 409)
        assert body["errors"]["active_task_id"] == busy["task_id"]
        assert body["errors"]["session_id"] == session_id
    # And nothing was stored for them
    listed = ok(hitl.get("/deployments/HumanInTheLoop/tasks", query_string=query))
    assert [t["task_id"] for t in listed] == [busy["task_id"]]
    assert status_of(hitl, "HumanInTheLoop", busy["task_id"]) in {"running", "waiting_input"}

    # When the first task ended
    answer(hitl, busy["task_id"], "done")
    assert wait_for_task(hitl, "HumanInTheLoop", busy["task_id"])["result"] == "done"
    # Then the same request is accepted
    accepted = create(hitl, "HumanInTheLoop", session_id, strategy="reject")
    asked(server, accepted["task_id"])
    answer(hitl, accepted["task_id"], "again")
    assert wait_for_task(hitl, "HumanInTheLoop", accepted["task_id"])["result"] == "again"


def test_unknown_multitask_strategy_is_refused(counter: FlaskClient) -> None:
    session_id = new_session(counter, "Counter")
    response = counter.post(
        "/deployments/Counter/tasks/create",
        query_string={"session_id": session_id, "multitask_strategy": "interrupt"},
        json={},
    )
    assert_error(response, 422)
    assert ok(counter.get("/deployments/Counter/tasks")) == []
