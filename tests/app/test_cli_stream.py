"""``celeriac run --stream``, ``tasks watch`` and ``tasks send-event`` against a live server."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from app.cli.main import cli
from app.sdk import Client
from tests.app.conftest import FAILING
from tests.conftest import EXAMPLES

HITL = EXAMPLES / "hitl" / "deployment.yml"
MULTISTEP = EXAMPLES / "multistep" / "deployment.yml"
QUICKSTART = EXAMPLES / "quickstart" / "deployment.yml"
#: Bound on any one wait; only a failing test waits this long.
DEADLINE = 15.0
ANSWER = ("--type", "workflows.events.HumanResponseEvent", "--data", '{"response": "42"}')


@pytest.fixture(autouse=True)
def isolated_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep profiles in tmp_path and start with no server in the environment."""
    path = tmp_path / "config" / "profiles.yml"
    monkeypatch.setenv("CELERIAC_CONFIG", str(path))
    monkeypatch.delenv("CELERIAC_SERVER", raising=False)
    return path


@pytest.fixture
def sdk(live_server: str) -> Iterator[Client]:
    """A client of the live server, to set the scene."""
    with Client(live_server, timeout=DEADLINE) as client:
        yield client


def on(server: str, *args: str) -> Result:
    """Run ``celeriac -s SERVER ARGS...`` in this process."""
    return CliRunner().invoke(cli, ["-s", server, *args], prog_name="celeriac")


def start(server: str, *args: str) -> subprocess.Popen[str]:
    """Start ``celeriac -s SERVER ARGS...`` in its own process, its output piped."""
    code = "from app.cli.main import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "-s", server, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def lines_of(process: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """The process's stdout lines as they come (None at its end), read by a thread."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_run_stream_prints_progress_then_result(live_server: str, sdk: Client) -> None:
    """``run --stream`` prints the three progress events as they come, then the result."""
    sdk.deployments.create(MULTISTEP)
    result = on(live_server, "run", "-d", "MultiStep", "-a", "message", "hello_world", "--stream")
    assert result.exit_code == 0, result.output
    *events, last = result.stdout.splitlines()
    parsed = [(kind, json.loads(data)) for kind, data in (e.split(" ", 1) for e in events)]
    assert [(kind, data["progress"]) for kind, data in parsed] == [
        ("ProgressEvent", 0.3),
        ("ProgressEvent", 0.6),
        ("ProgressEvent", 0.9),
    ]
    assert last == "hello_world_result_result_result"


def test_run_stream_of_a_failing_task_exits_non_zero(live_server: str, sdk: Client) -> None:
    """A task that fails ends ``run --stream`` with its error and exit code 1."""
    sdk.deployments.create(FAILING)
    result = on(live_server, "run", "-d", "Failing", "--stream")
    assert result.exit_code == 1
    assert "failed" in result.stderr and "boom" in result.stderr
    assert "Traceback" not in result.output


def test_run_reject_on_a_busy_session_fails(live_server: str, sdk: Client) -> None:
    """``--multitask-strategy reject`` on a busy session exits non-zero and says why."""
    sdk.deployments.create(HITL)
    busy = sdk.tasks.create("HumanInTheLoop")
    args = ["-d", "HumanInTheLoop", "-i", busy.session_id, "--multitask-strategy", "reject"]
    result = on(live_server, "run", *args)
    assert result.exit_code == 1
    assert "busy" in result.stderr and "Traceback" not in result.output
    answered = on(live_server, "tasks", "send-event", "-d", "HumanInTheLoop", busy.task_id, *ANSWER)
    assert answered.exit_code == 0, answered.output
    assert sdk.tasks.wait("HumanInTheLoop", busy.task_id).result == "42"


def test_watch_follows_a_task_answered_by_send_event(live_server: str, sdk: Client) -> None:
    """``tasks watch`` prints the question as it comes; ``tasks send-event --type --data``
    answers it; watch then prints the final status and the result 42."""
    sdk.deployments.create(HITL)
    task = sdk.tasks.create("HumanInTheLoop")
    watcher = start(live_server, "tasks", "watch", "-d", "HumanInTheLoop", task.task_id)
    try:
        lines = lines_of(watcher)
        first = lines.get(timeout=DEADLINE)
        assert first is not None and first.startswith("InputRequiredEvent "), first
        assert '"prefix": "What is the answer?"' in first
        assert sdk.tasks.get("HumanInTheLoop", task.task_id).status == "waiting_input"
        sent = on(live_server, "tasks", "send-event", "-d", "HumanInTheLoop", task.task_id, *ANSWER)
        assert sent.exit_code == 0, sent.output
        assert task.task_id in sent.stdout
        assert watcher.wait(timeout=DEADLINE) == 0
        rest = []
        while (line := lines.get(timeout=DEADLINE)) is not None:
            rest.append(line)
        assert rest == ["status: succeeded", "42"]
    finally:
        watcher.kill()
        watcher.communicate()


def test_watch_of_a_failed_task_exits_non_zero(live_server: str, sdk: Client) -> None:
    """``tasks watch`` of a task that failed prints its status and error, and exits 1."""
    sdk.deployments.create(FAILING)
    task = sdk.tasks.create("Failing")
    result = on(live_server, "tasks", "watch", "-d", "Failing", task.task_id)
    assert result.exit_code == 1
    assert result.stdout.splitlines()[-1] == "status: failed"
    assert "boom" in result.stderr and "Traceback" not in result.output


def test_send_event_to_an_ended_task_fails(live_server: str, sdk: Client) -> None:
    """``tasks send-event`` to a task that has ended exits non-zero with a message."""
    sdk.deployments.create(QUICKSTART)
    task = sdk.tasks.create("QuickStart", {"message": "hi"})
    assert sdk.tasks.wait("QuickStart", task.task_id).status == "succeeded"
    result = on(live_server, "tasks", "send-event", "-d", "QuickStart", task.task_id, *ANSWER)
    assert result.exit_code == 1
    assert "has ended" in result.stderr
    assert "Traceback" not in result.output


def test_send_event_with_a_serialized_event(live_server: str, sdk: Client) -> None:
    """``--event`` takes the JsonSerializer form as it is."""
    sdk.deployments.create(HITL)
    task = sdk.tasks.create("HumanInTheLoop")
    event = (
        '{"__is_pydantic": true, "value": {"response": "42"}, '
        '"qualified_name": "workflows.events.HumanResponseEvent"}'
    )
    args = ["-d", "HumanInTheLoop", task.task_id, "--event", event, "-S", "ask"]
    result = on(live_server, "tasks", "send-event", *args)
    assert result.exit_code == 0, result.output
    assert sdk.tasks.wait("HumanInTheLoop", task.task_id).result == "42"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "either --event or --type"),
        (("--event", "{}", "--type", "x.Y"), "either --event or --type"),
        (("--event", "{}", "--data", "{}"), "--data goes with --type"),
        (("--type", "x.Y", "--data", "[1]"), "must be a JSON object"),
        (("--type", "x.Y", "--data", "{oops"), "not valid JSON"),
    ],
)
def test_send_event_usage_errors(args: tuple[str, ...], message: str) -> None:
    """A missing or contradictory event is a usage error, before any request."""
    result = on("http://127.0.0.1:9", "tasks", "send-event", "-d", "Any", "task-id", *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_watch_of_an_unknown_task_fails(live_server: str, sdk: Client) -> None:
    """``tasks watch`` of a task that does not exist says so."""
    sdk.deployments.create(QUICKSTART)
    result = on(live_server, "tasks", "watch", "-d", "QuickStart", "no-such-task")
    assert result.exit_code == 1
    assert "not found" in result.stderr and "Traceback" not in result.output
