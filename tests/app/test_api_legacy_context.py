"""``ctx.get`` and ``ctx.set`` (llama-index-workflows 1.x) keep session state, as ``ctx.store``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.app.conftest import deployed, ok

#: Every test here ends with all its tasks ended: a task never stays queued.
pytestmark = pytest.mark.usefixtures("no_task_left_behind")

MIXED = Path(__file__).resolve().parent / "workflows" / "mixed_state" / "deployment.yml"


def new_session(client: FlaskClient) -> str:
    """A new session of the mixed workflow's deployment; its id."""
    session_id: str = ok(client.post("/deployments/MixedState/sessions/create"))["session_id"]
    return session_id


def stored_values(client: FlaskClient, session_id: str, key: str) -> list[Any]:
    """Every value stored under ``key`` in the session's Context, as the API shows it."""

    def find(data: Any) -> list[Any]:
        if isinstance(data, dict):
            here = [data[key]] if key in data else []
            return here + [v for value in data.values() for v in find(value)]
        if isinstance(data, list):
            return [v for item in data for v in find(item)]
        return []

    return find(ok(client.get(f"/deployments/MixedState/sessions/{session_id}"))["state"])


def run(client: FlaskClient, session_id: str, **kwargs: Any) -> Any:
    """``tasks/run`` of the mixed workflow in a session; the result."""
    response = client.post(
        "/deployments/MixedState/tasks/run",
        query_string={"session_id": session_id},
        json={"input": json.dumps(kwargs)},
    )
    return ok(response)


def test_ctx_set_and_ctx_store_share_the_session_state_across_tasks(client: FlaskClient) -> None:
    # Given a workflow that writes with ctx.set and reads with ctx.store.get, and the reverse
    deployed(client, MIXED)
    session_id = new_session(client)
    # When the session's first task runs
    first = run(client, session_id, word="spam")
    # Then it found nothing from before, and reads back crosswise what it just wrote
    assert first == {
        "previous": {"by_set": None, "by_store": None},
        "now": {"by_set": "spam", "by_store": "SPAM"},
    }
    # When the session's second task runs
    second = run(client, session_id, word="eggs")
    # Then it finds the first task's values: ctx.set's through ctx.store, and the reverse
    assert second == {
        "previous": {"by_set": "spam", "by_store": "SPAM"},
        "now": {"by_set": "eggs", "by_store": "EGGS"},
    }
    # And the session's stored Context holds the last values, once each (JSON-encoded, as
    # the Context's JsonSerializer stores every value)
    assert stored_values(client, session_id, "by_set") == [json.dumps("eggs")]
    assert stored_values(client, session_id, "by_store") == [json.dumps("EGGS")]


def test_a_new_session_starts_with_no_state(client: FlaskClient) -> None:
    # Given a session that stored values
    deployed(client, MIXED)
    run(client, new_session(client), word="spam")
    # When a task runs in another session
    other = run(client, new_session(client), word="eggs")
    # Then it sees none of them
    assert other["previous"] == {"by_set": None, "by_store": None}
