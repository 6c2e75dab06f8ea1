"""Durable tasks resume on the deployment version they started on, even after a reload (one
process: memory:// and SQLite; a worker restarted between the reload and the answer too)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from kombu.transport import memory

from app.server import Server
from config.settings import Settings
from tests.app.conftest import assert_error, ok, poll, wait_for_task
from tests.app.test_api_hitl import human_response
from tests.conftest import deploy, embedded_settings
from tests.support.pinned import write_project
from workers.catalog import http_version_fetcher
from workers.errors import UnknownDeployment

TASKS = "/deployments/Pinned/tasks"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The ``Pinned`` deployment's files and its two versions of code (``tests.support``)."""
    return write_project(tmp_path / "project")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded settings whose durable runs are let go after half a second of waiting."""
    return embedded_settings(tmp_path, worker_concurrency=2, release_after=0.5)


@pytest.fixture
def servers(settings: Settings) -> Iterator[list[Server]]:
    """Embedded servers on one data folder, started by the test, all closed afterwards."""
    started: list[Server] = []
    try:
        yield started
    finally:
        for server in started:
            server.close()
        memory.Channel.queues.clear()


def start(servers: list[Server], settings: Settings) -> FlaskClient:
    server = Server(settings)
    server.start_workers()
    servers.append(server)
    return server.app.test_client()


def deployed(client: FlaskClient, project: Path, name: str, *, reload: bool = False) -> None:
    ok(deploy(client, project / name, reload=reload, base_path=project))


def parked_task(client: FlaskClient, service: str) -> str:
    """Start a task of ``service`` and wait until its run was let go, waiting for input."""
    task = ok(client.post(f"{TASKS}/create", json={"service_id": service, "input": "{}"}))
    url = f"{TASKS}/{task['task_id']}"
    parked = poll(lambda: ok(client.get(url)), lambda t: t["parked_at"] is not None)
    assert parked["status"] == "waiting_input"
    return str(task["task_id"])


def answered(client: FlaskClient, task_id: str, service: str, answer: str) -> dict[str, Any]:
    """Send the answer and wait for the task's end."""
    ok(
        client.post(
            f"{TASKS}/{task_id}/events",
            json={"service_id": service, "event_obj_str": human_response(answer)},
        )
    )
    done: dict[str, Any] = wait_for_task(client, "Pinned", task_id)
    return done


def test_a_parked_task_resumes_on_its_version_after_a_reload_that_changed_the_code(
    servers: list[Server], settings: Settings, project: Path
) -> None:
    # Given a durable task parked while it waits for an answer, on version 1
    client = start(servers, settings)
    deployed(client, project, "first.yml")
    old_task = parked_task(client, "ask")
    # When the deployment is reloaded with other code (version 2), then the answer comes
    deployed(client, project, "changed.yml", reload=True)
    assert ok(client.get("/deployments/Pinned/spec"))["version"] == 2
    done = answered(client, old_task, "ask", "42")
    # Then the task finished with the code it started on
    assert done["status"] == "succeeded", done
    assert done["result"] == "old: 42"
    # And a task started after the reload runs the new code, parked and resumed as well
    new_task = parked_task(client, "ask")
    assert answered(client, new_task, "ask", "7")["result"] == "new: 7"


def test_a_parked_task_resumes_after_a_reload_that_renamed_its_service_and_a_restart(
    servers: list[Server], settings: Settings, project: Path
) -> None:
    # Given a durable task of service ``ask`` parked on version 1
    client = start(servers, settings)
    deployed(client, project, "first.yml")
    old_task = parked_task(client, "ask")
    # When a reload renames the service (``question``, with other code), the control plane
    # keeps version 1 for the task: workers can fetch it by number
    deployed(client, project, "renamed.yml", reload=True)
    kept = ok(client.get("/deployments/Pinned/versions/1/spec"))
    assert kept["version"] == 1
    assert list(kept["spec"]["services"]) == ["ask"]
    assert list(ok(client.get("/deployments/Pinned/spec"))["spec"]["services"]) == ["question"]
    # And the server restarts (its worker holds no code of version 1 any more) before the
    # answer comes
    servers.pop().close()
    memory.Channel.queues.clear()
    client = start(servers, settings)
    done = answered(client, old_task, "ask", "42")
    # Then the task finished on version 1's service and code, not lost, not failed
    assert done["status"] == "succeeded", done
    assert done["result"] == "old: 42"
    # And a task of the renamed service runs the new code
    new_task = parked_task(client, "question")
    assert answered(client, new_task, "question", "7")["result"] == "new: 7"


def test_a_retried_durable_task_starts_over_on_the_current_version(
    servers: list[Server], settings: Settings, project: Path
) -> None:
    # Given a durable task parked on version 1, cancelled, then the deployment reloaded
    client = start(servers, settings)
    deployed(client, project, "first.yml")
    task_id = parked_task(client, "ask")
    assert ok(client.get(f"{TASKS}/{task_id}"))["pinned_version"] == 1
    ok(client.post(f"{TASKS}/{task_id}/cancel"))
    assert wait_for_task(client, "Pinned", task_id)["status"] == "cancelled"
    deployed(client, project, "changed.yml", reload=True)
    # When it is retried (a new run, which starts over), parks again and is answered
    ok(client.post(f"{TASKS}/{task_id}/retry"))
    poll(
        lambda: ok(client.get(f"{TASKS}/{task_id}")),
        lambda t: t["status"] == "waiting_input" and t["parked_at"] is not None,
    )
    assert ok(client.get(f"{TASKS}/{task_id}"))["pinned_version"] == 2
    done = answered(client, task_id, "ask", "42")
    # Then it ran the current version's code
    assert (done["status"], done["result"]) == ("succeeded", "new: 42"), done


def test_a_version_no_unfinished_task_needs_is_dropped_at_the_next_reload(
    servers: list[Server], settings: Settings, project: Path
) -> None:
    # Given version 1 kept for a parked task across a reload, then the task finished
    client = start(servers, settings)
    deployed(client, project, "first.yml")
    task_id = parked_task(client, "ask")
    deployed(client, project, "changed.yml", reload=True)
    ok(client.get("/deployments/Pinned/versions/1/spec"))
    assert answered(client, task_id, "ask", "42")["result"] == "old: 42"
    # When the deployment is reloaded again
    deployed(client, project, "changed.yml", reload=True)
    # Then version 1 is gone, and asking for it is a 404 that names it; version 2, just
    # replaced, is kept (a task may have been stored on it while the reload committed), and
    # the current version is served by number too
    body = assert_error(client.get("/deployments/Pinned/versions/1/spec"), 404)
    assert "version 1" in body["message"]
    assert ok(client.get("/deployments/Pinned/spec"))["kept_versions"] == [2]
    assert ok(client.get("/deployments/Pinned/versions/3/spec"))["version"] == 3


def test_a_worker_asking_over_http_for_a_version_that_is_gone_is_told_which(
    live_server: str, client: FlaskClient, project: Path
) -> None:
    # Given a deployment at version 1
    deployed(client, project, "first.yml")
    fetch_version = http_version_fetcher(live_server)
    # When a worker fetches version 1, then version 5 (never made, or no longer kept)
    assert fetch_version("Pinned", 1).spec.services["ask"].import_path == "flow:asking"
    with pytest.raises(UnknownDeployment) as caught:
        fetch_version("Pinned", 5)
    # Then the error names the version, as the task that needed it reports it
    assert "version 5 of deployment 'Pinned'" in str(caught.value)
    assert "no version 5" in str(caught.value)


def test_a_version_number_past_any_version_is_a_404_naming_it(
    servers: list[Server], settings: Settings, project: Path
) -> None:
    # Given a deployment at version 1
    client = start(servers, settings)
    deployed(client, project, "first.yml")
    # When a version far past any is asked for (past the database's integers too)
    for version in (2, 2**31, 50722225994398768068271538176):
        response = client.get(f"/deployments/Pinned/versions/{version}/spec")
        # Then it is a 404 that names the version, never a server error
        assert response.status_code == 404, response.get_data(as_text=True)
        assert f"no version {version}" in response.get_json()["message"]
