"""A ``tasks/run`` whose client disconnects stops holding its HTTP thread (issue 14, item 5):
waitress keeps reading the connection while the request runs, and the wait asks it, every
half second, whether the client is still there. The task itself runs on."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from waitress import wasyncore

from app.server import Server
from tests.app.conftest import SLEEPY, deployed, ok, poll, wait_for_task

RUNS = 20


@pytest.fixture
def http(server: Server) -> Iterator[Any]:
    """The server's waitress server, listening on a free port."""
    http = server.http_server()
    thread = threading.Thread(target=http.run, name="test-http", daemon=True)
    thread.start()
    try:
        yield http
    finally:
        with contextlib.suppress(OSError):
            http.trigger.pull_trigger(lambda: wasyncore.close_all(http._map))
        thread.join(timeout=5)
        http.task_dispatcher.shutdown()


def open_run(port: int, path: str, body: dict[str, Any]) -> socket.socket:
    """Send a run request and leave its connection open, unread."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return sock


def listed(client: FlaskClient) -> list[dict[str, Any]]:
    """The tasks of the Sleepy deployment."""
    tasks: list[dict[str, Any]] = ok(
        client.get("/deployments/Sleepy/tasks", query_string={"limit": 100})
    )
    return tasks


@pytest.mark.parametrize(
    "path",
    [
        "/deployments/Sleepy/tasks/run?timeout=60",
        "/deployments/Sleepy/workflows/sleepy/run?timeout=60",
    ],
)
def test_dropped_clients_free_their_threads(client: FlaskClient, http: Any, path: str) -> None:
    # Given 20 runs of a workflow that sleeps 2 s, each waited for by its own HTTP thread
    deployed(client, SLEEPY)
    body = (
        {"input": json.dumps({"seconds": 2})}
        if "tasks/run" in path
        else {"start_event": {"seconds": 2}}
    )
    sockets = [open_run(http.effective_port, path, body) for _ in range(RUNS)]
    dispatcher = http.task_dispatcher
    poll(lambda: dispatcher.active_count, lambda busy: busy == RUNS)
    # (A busy thread may not have read its request yet, on a loaded machine: a client gone by
    # then sent nothing the server took, and no task is stored. Every task is stored first.)
    poll(lambda: len(listed(client)), lambda stored: stored == RUNS)
    # When every client goes away
    dropped = time.monotonic()
    for sock in sockets:
        sock.close()
    # Then every thread is free again within a second or so, long before the runs end
    poll(lambda: dispatcher.active_count, lambda busy: busy == 0, timeout=5)
    freed = time.monotonic() - dropped
    assert freed < 2.0, freed
    # And the tasks run on to their end, as a timed-out run's would
    tasks = listed(client)
    assert len(tasks) == RUNS
    done = [wait_for_task(client, "Sleepy", t["task_id"], timeout=60) for t in tasks]
    assert {(t["status"], t["result"]) for t in done} == {("succeeded", "slept 2s")}


def test_a_client_that_stays_gets_its_answer(client: FlaskClient, http: Any) -> None:
    deployed(client, SLEEPY)
    sock = open_run(
        http.effective_port, "/deployments/Sleepy/tasks/run", {"input": '{"seconds": 0.6}'}
    )
    with sock:
        sock.settimeout(10)
        answer = b""
        while b"slept" not in answer:
            chunk = sock.recv(4096)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(b'"slept 0.6s"\n')
