"""Every 503 says when to try again (``Retry-After``), and a task stored before the outage is
named with what became of it, so that a client that tries again never runs it twice.

The outages are real: a broker and a database on ports where nothing listens, and a database
port that accepts connections and never answers. (``tests/e2e/test_database_faults.py``
takes a real PostgreSQL away under load.)"""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.test import TestResponse

import migrations
from app.control.plane import ControlPlane
from app.errors import RETRY_AFTER
from app.factory import create_app
from app.models.base import utcnow
from config.settings import Settings
from tests.conftest import QUICKSTART, deploy
from tests.support.network import closed_port
from tests.support.processes import Processes
from tests.support.servers import PrivateRedis
from workers.protocol import service_queue


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
def test_a_task_the_broker_does_not_take_stays_queued_and_is_sent_once_it_is_back(
    tmp_path: Path, path: str
) -> None:
    """A publish that fails may have landed all the same (the broker stored the message and
    went away before it answered): the task is never failed for it, but named in the 503 and
    left for the control plane's sweep, which sends it once the broker takes it."""
    # Given an API server whose Redis broker is down
    processes = Processes(tmp_path / "logs")
    broker = PrivateRedis(processes, tmp_path / "redis", port=closed_port())
    settings = Settings(data_dir=tmp_path / ".celeriac", broker_url=broker.url)
    settings.data_dir.mkdir()
    migrations.upgrade(settings.sqlalchemy_url)
    app = create_app(settings)
    plane = app.extensions["celeriac"]
    assert isinstance(plane, ControlPlane)
    try:
        client = app.test_client()
        assert deploy(client, QUICKSTART).status_code == 200
        # When a task is sent with tasks/run or tasks/create
        response = client.post(
            f"/deployments/QuickStart/tasks/{path}", json={"input": json.dumps({"message": "hi"})}
        )
        # Then the answer is 503 with Retry-After, naming the stored task: queued, to be sent
        errors = assert_try_again_later(response)
        assert errors.keys() == {"task_id", "status", "published"}
        assert (errors["status"], errors["published"]) == ("queued", False)
        assert "do not send it again" in response.get_json()["message"].lower()
        task_id = errors["task_id"]
        task = client.get(f"/deployments/QuickStart/tasks/{task_id}").get_json()
        assert (task["status"], task["error"]) == ("queued", None)
        # And once the broker is back, the control plane's sweep sends it, once
        broker.start()
        far_ahead = utcnow() + dt.timedelta(hours=1)
        assert plane.outbox.sweep(cutoff=far_ahead) == [task_id]
        plane.outbox.flush()
        assert plane.outbox.sweep(cutoff=far_ahead) == []
        queue = service_queue("QuickStart", "echo_workflow")
        assert broker.client().llen(queue) == 1
    finally:
        plane.close()
        processes.kill_all()


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
