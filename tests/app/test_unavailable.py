"""Every 503 says when to try again (``Retry-After``), and a task stored before the outage is
named with what became of it, so that a client that tries again never runs it twice.

The outages are real: a broker and a database on ports where nothing listens, and a database
port that accepts connections and never answers. (``tests/e2e/test_database_faults.py``
takes a real PostgreSQL away under load.)"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

import migrations
from app.control.plane import ControlPlane
from app.errors import RETRY_AFTER
from app.factory import create_app
from config.settings import Settings
from tests.conftest import QUICKSTART, deploy


def closed_port() -> int:
    """A local TCP port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def app_without_broker(tmp_path: Path) -> Iterator[Flask]:
    """An API server on SQLite whose Redis broker does not answer."""
    settings = Settings(
        data_dir=tmp_path / ".celeriac", broker_url=f"redis://127.0.0.1:{closed_port()}/0"
    )
    settings.data_dir.mkdir()
    migrations.upgrade(settings.sqlalchemy_url)
    app = create_app(settings)
    yield app
    plane = app.extensions["celeriac"]
    assert isinstance(plane, ControlPlane)
    plane.close()


@pytest.fixture
def app_without_database(tmp_path: Path) -> Iterator[Flask]:
    """An API server whose PostgreSQL database does not answer."""
    pytest.importorskip("psycopg")
    url = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/celeriac?connect_timeout=2"
    app = create_app(Settings(data_dir=tmp_path / ".celeriac", database_url=url))
    yield app
    app.extensions["celeriac"].close()


def assert_try_again_later(response: TestResponse) -> dict[str, object]:
    """A 503 in the one error shape, with Retry-After; its ``errors``."""
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.headers["Retry-After"] == str(RETRY_AFTER)
    body = response.get_json()
    assert set(body) <= {"code", "status", "message", "errors"}
    assert (body["code"], body["status"]) == (503, "Service Unavailable")
    errors: dict[str, object] = body.get("errors", {})
    return errors


@pytest.mark.parametrize("path", ["run", "create"])
def test_a_task_the_broker_refuses_is_named_failed_and_never_sent(
    app_without_broker: Flask, path: str
) -> None:
    client: FlaskClient = app_without_broker.test_client()
    # Given a deployment on a server whose broker is down
    assert deploy(client, QUICKSTART).status_code == 200
    # When a task is sent with tasks/run or tasks/create
    response = client.post(
        f"/deployments/QuickStart/tasks/{path}", json={"input": json.dumps({"message": "hi"})}
    )
    # Then the answer is 503 with Retry-After, naming the stored task: failed, never sent
    errors = assert_try_again_later(response)
    assert set(errors) == {"task_id", "status", "published"}
    assert (errors["status"], errors["published"]) == ("failed", False)
    assert "send it again" in response.get_json()["message"]
    # And the task reads so too: a client that sends it again runs the work once
    task = client.get(f"/deployments/QuickStart/tasks/{errors['task_id']}").get_json()
    assert (task["status"], task["error"]["type"]) == ("failed", "DispatchError")


def test_a_database_that_does_not_answer_gives_503_with_retry_after(
    app_without_database: Flask,
) -> None:
    client = app_without_database.test_client()
    # When a client reads, or sends a task, while the database is down
    listed = client.get("/deployments/")
    run = client.post("/deployments/QuickStart/tasks/run", json={"input": "{}"})
    # Then each answer is 503 with Retry-After, and the task names nothing: none was stored
    for response in (listed, run):
        assert assert_try_again_later(response) == {}


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A local port whose listener accepts connections (in the kernel) and never answers,
    like a database server that hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield int(listener.getsockname()[1])


def test_a_database_that_accepts_and_never_answers_gives_503_within_its_timeout(
    tmp_path: Path, silent_port: int
) -> None:
    pytest.importorskip("psycopg")
    # Given an API server whose database accepts connections and then says nothing
    url = f"postgresql+psycopg://postgres@127.0.0.1:{silent_port}/celeriac"
    settings = Settings(data_dir=tmp_path / ".celeriac", database_url=url, database_timeout=1.0)
    app = create_app(settings)
    answers: list[tuple[float, TestResponse]] = []

    def ask() -> None:
        began = time.monotonic()
        response = app.test_client().get("/deployments/")
        answers.append((time.monotonic() - began, response))

    # When a client reads
    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    asking.join(timeout=15)
    try:
        # Then it gets a 503 with Retry-After, within the time to connect (libpq's minimum
        # of 2 s) and a little more, rather than waiting for ever
        assert answers, "the request still waits for the database"
        [(took, response)] = answers
        assert assert_try_again_later(response) == {}
        assert took < 2.0 + 1.5, took
    finally:
        app.extensions["celeriac"].close()
