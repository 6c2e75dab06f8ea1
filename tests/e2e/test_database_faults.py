"""Database faults: the database stops answering, and the API answers 503 with Retry-After in
time, never a 500 nor a hang; a task whose insert was on its way is named, as the database may
store it all the same."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.test import TestResponse

import migrations
from app.errors import RETRY_AFTER
from app.factory import create_app
from config.settings import Settings
from tests.conftest import QUICKSTART, deploy
from tests.support.processes import poll, require_module

pytestmark = pytest.mark.e2e


@pytest.fixture
def app_on_postgres(postgres_url: str, tmp_path: Path) -> Iterator[Flask]:
    """An API server (in this process, on the memory broker, with no workers) on a fresh
    PostgreSQL database that it waits for one second at a time, serving the quick start."""
    migrations.upgrade(postgres_url)
    settings = Settings(
        data_dir=tmp_path / ".celeriac", database_url=postgres_url, database_timeout=1.0
    )
    app = create_app(settings)
    assert deploy(app.test_client(), QUICKSTART).status_code == 200
    yield app
    app.extensions["celeriac"].close()


@contextlib.contextmanager
def tasks_locked(url: str) -> Iterator[None]:
    """The tasks table locked by another session (reads and writes of it wait) until the
    block ends."""
    psycopg = require_module("psycopg")
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:
        conn.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()


def answered(request: Callable[[], TestResponse], within: float = 1.0 + 1.0) -> TestResponse:
    """The answer to ``request``, which must come within ``within`` seconds."""
    answers: list[TestResponse] = []
    asking = threading.Thread(target=lambda: answers.append(request()), daemon=True)
    asking.start()
    asking.join(timeout=within)
    assert answers, f"no answer within {within:g} s"
    return answers[0]


def test_a_database_that_does_not_answer_in_time_gives_503_naming_the_task_it_may_store(
    app_on_postgres: Flask, postgres_url: str
) -> None:
    """A statement the database holds past the timeout is given up: the client hears 503 at
    once, and a task whose insert was on its way is named, as the database may store it."""
    client = app_on_postgres.test_client()
    body = {"input": json.dumps({"message": "hi"})}
    # Given the database holding every statement on tasks (a lock here, a frozen server or a
    # cut network elsewhere)
    with tasks_locked(postgres_url):
        # When a client lists tasks, and runs one
        listed = answered(lambda: client.get("/deployments/QuickStart/tasks"))
        run = answered(lambda: client.post("/deployments/QuickStart/tasks/run", json=body))
        # Then each gets 503 with Retry-After, within the timeout (and a little more)
        for response in (listed, run):
            assert response.status_code == 503, response.get_data(as_text=True)
            assert response.headers["Retry-After"] == str(RETRY_AFTER)
        # And the list stored nothing; the run names its task, whose fate is unknown
        assert "errors" not in listed.get_json()
        errors = run.get_json()["errors"]
        assert (errors["status"], errors["published"]) == ("unknown", False), errors
        assert "send it again with task_id" in run.get_json()["message"].lower()
    # When the database goes on: it did store the task (its insert waited for the lock)
    task_id = errors["task_id"]
    poll(
        lambda: client.get(f"/deployments/QuickStart/tasks/{task_id}").status_code,
        lambda status: status == 200,
        10,
        "the task stored once the lock went",
    )
    # Then sending it again under its id is refused: it is not run twice
    again = client.post("/deployments/QuickStart/tasks/run", json=body | {"task_id": task_id})
    assert again.status_code == 409, again.get_data(as_text=True)
    # And the server works again on its own
    assert client.get("/deployments/QuickStart/tasks").status_code == 200
