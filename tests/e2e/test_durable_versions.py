"""End to end on Redis with PostgreSQL: a parked durable task resumes on the deployment version
it started on, after a reload that renamed its service, on a worker started after the reload
(which fetches the old version over HTTP, and consumes the old service's queue)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.app.test_api_hitl import human_response
from tests.e2e.conftest import Platform, node
from tests.support.pinned import write_project
from tests.support.processes import STOP_TIMEOUT, poll

TASKS = "/deployments/Pinned/tasks"
#: Bound on any one wait of the test; only a failing test waits this long.
DEADLINE = 45.0

pytestmark = pytest.mark.e2e


def ok(response: httpx.Response) -> Any:
    """The JSON body of a 200 response."""
    assert response.status_code == 200, response.text
    return response.json()


def deploy(platform: Platform, path: Path, *, reload: bool = False) -> None:
    """Deploy a file over HTTP, its folder being the base path."""
    ok(
        platform.http.post(
            "/deployments/create",
            params={"base_path": str(path.parent), "reload": "true" if reload else "false"},
            files={"config_file": (path.name, path.read_bytes())},
        )
    )


def parked_task(platform: Platform, service: str) -> str:
    """Start a task of ``service`` and wait until its run was let go, waiting for input."""
    body = {"service_id": service, "input": "{}"}
    task_id = str(ok(platform.http.post(f"{TASKS}/create", json=body))["task_id"])
    poll(
        lambda: ok(platform.http.get(f"{TASKS}/{task_id}")),
        lambda t: t["status"] == "waiting_input" and t["parked_at"] is not None,
        DEADLINE,
        f"task {task_id} parked",
    )
    return task_id


def answered(platform: Platform, task_id: str, service: str, answer: str) -> dict[str, Any]:
    """Send the answer; the task once it ended."""
    body = {"service_id": service, "event_obj_str": human_response(answer)}
    ok(platform.http.post(f"{TASKS}/{task_id}/events", json=body))
    done: dict[str, Any] = poll(
        lambda: ok(platform.http.get(f"{TASKS}/{task_id}")),
        lambda t: t["status"] in {"succeeded", "failed", "cancelled", "timed_out"},
        DEADLINE,
        f"task {task_id} ended",
    )
    return done


def test_a_parked_task_resumes_on_its_version_after_a_rename_on_a_new_worker(
    make_platform: Callable[[str], Platform], redis_url: str, tmp_path: Path
) -> None:
    # Given the platform on Redis and PostgreSQL, runs let go after a second of waiting, and
    # a durable task of service ``ask`` parked on version 1
    platform = make_platform(redis_url)
    platform.settings["CELERIAC_RELEASE_AFTER"] = "1"
    project = write_project(tmp_path / "project")
    platform.serve()
    platform.control_plane()
    platform.wait_for_consumer(node("control-plane"), timeout=DEADLINE)
    deploy(platform, project / "first.yml")
    first = platform.service_worker("w1", deployment="Pinned", concurrency=2)
    platform.wait_for_workers("Pinned", {node("w1")}, timeout=DEADLINE)
    old_task = parked_task(platform, "ask")
    # When a reload renames the service, with other code, and the only worker is replaced by
    # one started after the reload
    deploy(platform, project / "renamed.yml", reload=True)
    assert ok(platform.http.get("/deployments/Pinned/spec"))["kept_versions"] == [1]
    first.popen.send_signal(signal.SIGTERM)
    assert first.popen.wait(timeout=STOP_TIMEOUT) == 0, first.output()
    platform.service_worker("w2", deployment="Pinned", concurrency=2)
    platform.wait_for_workers("Pinned", {node("w2")}, timeout=DEADLINE)
    done = answered(platform, old_task, "ask", "42")
    # Then the task finished on version 1's code
    assert (done["status"], done["result"]) == ("succeeded", "old: 42"), done
    # And a task of the renamed service runs the new code
    new_task = parked_task(platform, "question")
    assert answered(platform, new_task, "question", "7")["result"] == "new: 7"
    # And once no unfinished task needs version 1, the next reload drops it (and keeps the
    # version it replaces, 2)
    deploy(platform, project / "renamed.yml", reload=True)
    assert ok(platform.http.get("/deployments/Pinned/spec"))["kept_versions"] == [2]
    gone = platform.http.get("/deployments/Pinned/versions/1/spec")
    assert gone.status_code == 404 and "version 1" in gone.json()["message"]
