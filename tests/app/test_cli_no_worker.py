"""``celeriac run`` of a task for a service that no live worker serves: it says so at once,
naming the service and the command that starts a worker.

The server here runs no worker at all (as a distributed control plane whose service workers
are not started yet): its tasks stay queued.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from kombu.transport import memory

from app.cli.main import cli
from app.server import Server
from config.settings import Settings
from tests.conftest import QUICKSTART
from tests.support.cli_tables import rows

NOTICE = (
    "Task {task} is queued, but no live worker serves service 'echo_workflow' of deployment "
    "'QuickStart'; it waits until one starts (on a host with the broker's settings):\n"
    "  celeriac -s {server} worker --deployment QuickStart --service echo_workflow\n"
)

#: Each test waits on real time (tasks that nap, waits for a notice): once per run.
pytestmark = pytest.mark.timing

CLI = "from app.cli.main import main; main()"


@pytest.fixture(autouse=True)
def isolated_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERIAC_CONFIG", str(tmp_path / "config" / "profiles.yml"))
    monkeypatch.delenv("CELERIAC_SERVER", raising=False)
    monkeypatch.delenv("CELERIAC_TOKEN", raising=False)


@pytest.fixture
def server(settings: Settings) -> Iterator[Server]:
    """A control plane whose workers are not started: the API answers, no task runs."""
    srv = Server(settings)
    try:
        yield srv
    finally:
        srv.close()
        memory.Channel.queues.clear()


def on(server: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["-s", server, *args], prog_name="celeriac")


def only_task(server: str) -> str:
    listed = on(server, "tasks", "list", "-d", "QuickStart", "-o", "json")
    assert listed.exit_code == 0, listed.output
    [task] = json.loads(listed.stdout)
    return str(task["task_id"])


@pytest.mark.parametrize("stream", [False, True], ids=["wait", "stream"])
def test_a_task_no_worker_serves_is_named_at_once_with_how_to_start_one(
    live_server: str, stream: bool
) -> None:
    # Given a deployment that no worker serves
    assert on(live_server, "deploy", str(QUICKSTART)).exit_code == 0
    # When a task of it runs
    args = ["-s", live_server, "run", "-d", "QuickStart", "-a", "message", "hi"]
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-c", CLI, *args, *(["--stream"] if stream else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Then stderr names the service and the deployment, and the command that starts a
        # worker for them, within a second or so (the CLI's own start included)
        assert process.stderr is not None
        said = process.stderr.readline() + process.stderr.readline()
        elapsed = time.monotonic() - started
    finally:
        process.kill()
        process.communicate()
    task = only_task(live_server)
    assert said == NOTICE.format(task=task, server=live_server)
    assert elapsed < 3.0
    # (Cancelled, the task ends the event stream the server still holds open for the CLI.)
    assert on(live_server, "tasks", "cancel", "-d", "QuickStart", task).exit_code == 0


def test_deployments_get_shows_a_service_no_worker_serves(live_server: str) -> None:
    assert on(live_server, "deploy", str(QUICKSTART)).exit_code == 0
    shown = on(live_server, "deployments", "get", "QuickStart")
    assert shown.exit_code == 0, shown.output
    [service] = rows(shown.stdout, block=1)
    assert (service["SERVICE"], service["WORKER"], service["LAST HEARTBEAT"]) == (
        "echo_workflow",
        "(none live)",
        "-",
    )


def test_the_notice_comes_before_the_end_of_the_wait(live_server: str) -> None:
    assert on(live_server, "deploy", str(QUICKSTART)).exit_code == 0
    # (a wait well past the notice's 0.8 s, which a loaded machine may stretch)
    result = on(live_server, "run", "-d", "QuickStart", "-a", "message", "hi", "--timeout", "3")
    assert result.exit_code == 1
    assert result.stdout == ""
    task = only_task(live_server)
    notice = NOTICE.format(task=task, server=live_server)
    assert result.stderr.startswith(notice + f"Error: task {task} has not ended after 3 s;")
    assert on(live_server, "tasks", "cancel", "-d", "QuickStart", task).exit_code == 0
