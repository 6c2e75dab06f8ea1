"""Fixtures and helpers of the HTTP API tests: deployment folders, error checks, polling."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from kombu.transport import memory
from sqlalchemy import select
from werkzeug.test import TestResponse

from app.models import Event, TaskStatus
from app.models.base import table_of
from app.server import Server
from config.settings import Settings
from tests.conftest import deploy

WORKFLOWS = Path(__file__).resolve().parent / "workflows"
FAILING = WORKFLOWS / "failing" / "deployment.yml"
FLAKY = WORKFLOWS / "flaky" / "deployment.yml"
SLEEPY = WORKFLOWS / "sleepy" / "deployment.yml"
STRUCTURED = WORKFLOWS / "structured" / "deployment.yml"
ENVIRON = WORKFLOWS / "environ" / "deployment.yml"
ENVIRON_TOO = WORKFLOWS / "environ" / "other.yml"
TWIN_ONE = WORKFLOWS / "twins" / "one" / "deployment.yml"
TWIN_TWO = WORKFLOWS / "twins" / "two" / "deployment.yml"

TERMINAL = frozenset(status.value for status in TaskStatus if status.terminal)
#: Where flask-smorest files request-parsing errors under ``errors``.
LOCATIONS = frozenset({"query", "json", "files", "form", "headers", "cookies", "path"})
_EVENTS = table_of(Event)
#: Generous bound for work that takes milliseconds; only a failing test ever waits this long.
DEADLINE = 10.0

ECHO_YAML = """\
name: {name}

control-plane: {{}}

default-service: echo

services:
  echo:
    name: Echo
    source:
      type: local
      name: ./src
    path: workflow:echo_workflow
"""

ECHO_CODE = """\
from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent


class EchoWorkflow(Workflow):
    @step
    async def echo(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result={reply!r} + str(ev.get("data", "")))


echo_workflow = EchoWorkflow(timeout=10)
"""


def write_echo_deployment(folder: Path, name: str, reply: str) -> Path:
    """Write a one-service deployment answering ``reply + data`` into ``folder``; its YAML path."""
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "workflow.py").write_text(ECHO_CODE.format(reply=reply))
    path = folder / "deployment.yml"
    path.write_text(ECHO_YAML.format(name=name))
    return path


def post_yaml(
    client: FlaskClient, content: str | bytes, base_path: Path, **query: str
) -> TestResponse:
    """POST a deployment file given as text, the way LlamaDeploy clients upload one."""
    data = content.encode() if isinstance(content, str) else content
    return client.post(
        "/deployments/create",
        query_string={"base_path": str(base_path), **query},
        data={"config_file": (io.BytesIO(data), "deployment.yml")},
        content_type="multipart/form-data",
    )


def assert_error(response: TestResponse, code: int) -> dict[str, Any]:
    """Check the status and the one error shape ``{code, status, message[, errors]}``."""
    assert response.status_code == code, response.get_data(as_text=True)
    body = response.get_json(silent=True)
    assert isinstance(body, dict), response.get_data(as_text=True)
    assert set(body) in ({"code", "status", "message"}, {"code", "status", "message", "errors"}), (
        f"error body has keys {sorted(body)}: {body}"
    )
    assert body["code"] == code
    assert body["status"] == HTTPStatus(code).phrase
    assert isinstance(body["message"], str) and body["message"], body
    if "errors" in body:
        assert isinstance(body["errors"], dict) and body["errors"], body
    return body


def field_errors(body: dict[str, Any]) -> dict[str, Any]:
    """The ``errors`` of an error body by field, whether or not filed under a request location."""
    errors: dict[str, Any] = {}
    for key, value in body.get("errors", {}).items():
        if key in LOCATIONS and isinstance(value, dict):
            errors.update(value)
        else:
            errors[key] = value
    return errors


def ok(response: TestResponse, code: int = 200) -> Any:
    """The JSON body of a successful response (the status is checked first)."""
    assert response.status_code == code, response.get_data(as_text=True)
    return response.get_json()


def deployed(client: FlaskClient, path: Path) -> dict[str, Any]:
    """Deploy ``path`` (its folder is the base path) and return the deployment."""
    body: dict[str, Any] = ok(deploy(client, path))
    return body


def poll(probe: Callable[[], Any], until: Callable[[Any], bool], timeout: float = DEADLINE) -> Any:
    """Call ``probe`` until ``until(value)`` holds; fail with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = probe()
        if until(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"still not there after {timeout} s: {value!r}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def asked(server: Server, task_id: str) -> None:
    """Wait until the task streamed its question (an event is stored before it is streamed)."""
    query = select(_EVENTS.c.seq).where(
        _EVENTS.c.task_id == task_id,
        _EVENTS.c.direction == "out",
        _EVENTS.c.type == "InputRequiredEvent",
    )

    def questions() -> list[Any]:
        with server.plane.db.engine.connect() as conn:
            return list(conn.execute(query))

    poll(questions, bool)


def wait_for_task(
    client: FlaskClient, deployment: str, task_id: str, timeout: float = DEADLINE
) -> dict[str, Any]:
    """Poll ``GET tasks/{id}`` until the task ended; return it."""
    url = f"/deployments/{deployment}/tasks/{task_id}"
    task: dict[str, Any] = poll(
        lambda: ok(client.get(url)), lambda t: t["status"] in TERMINAL, timeout
    )
    return task


def all_tasks(client: FlaskClient) -> list[dict[str, Any]]:
    """Every task of every deployment."""
    tasks: list[dict[str, Any]] = []
    for deployment in ok(client.get("/deployments/")):
        tasks.extend(ok(client.get(f"/deployments/{deployment['name']}/tasks?limit=1000")))
    return tasks


@pytest.fixture
def no_task_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used ``client``, every task it submitted ends: none stays queued."""
    if "client" not in request.fixturenames:
        yield
        return
    client: FlaskClient = request.getfixturevalue("client")
    yield
    poll(
        lambda: all_tasks(client),
        lambda tasks: all(t["status"] in TERMINAL for t in tasks),
    )


@pytest.fixture
def limited_client(settings: Settings) -> Iterator[FlaskClient]:
    """A client of a server (with real in-process workers) that takes one deployment at most."""
    srv = Server(settings.replace(max_deployments=1))
    srv.start_workers()
    try:
        yield srv.app.test_client()
    finally:
        srv.close()
        memory.Channel.queues.clear()


@pytest.fixture
def workerless(settings: Settings) -> Iterator[Server]:
    """A control plane whose workers never start: its tasks stay queued until the test, playing
    their worker, hands the control plane reports (``tests.support.reports``)."""
    srv = Server(settings)
    try:
        yield srv
    finally:
        srv.close()
        memory.Channel.queues.clear()
