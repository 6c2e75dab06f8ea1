"""What ``celeriac run`` and ``tasks get`` show of a task that did not succeed: the error, the
workflow's own frame (to an admin token's holder, who may see tracebacks), ``--traceback``
for the whole trace, and exit code 1 from ``run``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from app.cli.failures import own_frame
from app.cli.main import cli
from app.server import Server
from tests.app.conftest import FAILING, SLEEPY
from tests.support.cli_tables import blocks, rows

#: Where the failing workflow raises, as its frame shows it.
RAISED = (
    f'  File "{FAILING.parent / "src" / "workflow.py"}", line 15, in explode',
    '    raise ValueError("boom")',
)


@pytest.fixture(autouse=True)
def isolated_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERIAC_CONFIG", str(tmp_path / "config" / "profiles.yml"))
    monkeypatch.delenv("CELERIAC_SERVER", raising=False)
    monkeypatch.delenv("CELERIAC_TOKEN", raising=False)


@pytest.fixture
def tokens(server: Server, live_server: str) -> dict[str, str]:
    """An admin and a run token of the live server, with the failing and sleepy workflows
    deployed."""
    made = {scope: server.plane.tokens.create(scope).token for scope in ("admin", "run")}
    for path in (FAILING, SLEEPY):
        deployed = on(live_server, made["admin"], "deploy", str(path))
        assert deployed.exit_code == 0, deployed.output
    return made


def on(server: str, token: str, *args: str) -> Result:
    """``celeriac -s SERVER --token TOKEN ARGS...``."""
    return CliRunner().invoke(cli, ["-s", server, "--token", token, *args], prog_name="celeriac")


def test_run_shows_the_error_and_the_workflows_own_frame(
    live_server: str, tokens: dict[str, str]
) -> None:
    # When a workflow that raises runs, asked by an admin token's holder
    result = on(live_server, tokens["admin"], "run", "-d", "Failing")
    # Then run exits 1 with the error, then the frame of the workflow's file that raised it,
    # and a word on --traceback; nothing of Celeriac's or llama-index's frames
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("Error: task ") and lines[0].endswith(" failed: ValueError: boom")
    assert tuple(lines[1:3]) == RAISED
    assert lines[3:] == ["(--traceback shows the whole trace)"]
    # And with --traceback, the whole trace, Celeriac's frames and all
    traced = on(live_server, tokens["admin"], "run", "-d", "Failing", "--traceback")
    assert traced.exit_code == 1
    assert "Traceback (most recent call last):" in traced.stderr
    assert "workers/runtime.py" in traced.stderr and "site-packages/workflows" in traced.stderr
    assert traced.stderr.rstrip().endswith("ValueError: boom")


def test_tasks_get_shows_the_error_and_the_frame(live_server: str, tokens: dict[str, str]) -> None:
    # Given a task that failed
    ran = on(live_server, tokens["admin"], "run", "-d", "Failing")
    assert ran.exit_code == 1
    task_id = ran.stderr.split()[2]
    # When it is read
    got = on(live_server, tokens["admin"], "tasks", "get", "-d", "Failing", task_id)
    # Then its row says failed, and the error shows under it with the workflow's frame
    assert got.exit_code == 0, got.output
    [row] = rows(got.stdout)
    assert (row["TASK"], row["STATUS"], row["SERVICE"], row["ATTEMPTS"]) == (
        task_id,
        "failed",
        "boom",
        "1",
    )
    details = blocks(got.stdout)[1]
    assert details[:4] == ["input:  {}", "error:  ValueError: boom", *RAISED]
    # And --traceback shows the whole trace there too; -o json holds it under error
    traced = on(
        live_server, tokens["admin"], "tasks", "get", "-d", "Failing", task_id, "--traceback"
    )
    assert "Traceback (most recent call last):" in traced.stdout
    as_json = on(
        live_server, tokens["admin"], "tasks", "get", "-d", "Failing", task_id, "-o", "json"
    )
    error = json.loads(as_json.stdout)["error"]
    assert error["type"] == "builtins.ValueError" and "workers/runtime.py" in error["traceback"]


def test_without_the_right_to_see_tracebacks_the_error_alone_is_shown(
    live_server: str, tokens: dict[str, str]
) -> None:
    # When a run token's holder runs the failing workflow
    result = on(live_server, tokens["run"], "run", "-d", "Failing")
    # Then the error is shown, without a frame (the server gives none)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[1:] == []
    assert result.stderr.endswith(" failed: ValueError: boom\n")
    # And --traceback says why there is none
    traced = on(live_server, tokens["run"], "run", "-d", "Failing", "--traceback")
    assert traced.stderr.splitlines()[-1] == (
        "(no traceback: the server shows tracebacks to admin tokens only)"
    )


@pytest.mark.timing
def test_run_of_a_task_that_timed_out_exits_1(live_server: str, tokens: dict[str, str]) -> None:
    result = on(
        live_server,
        tokens["run"],
        "run",
        "-d",
        "Sleepy",
        "-a",
        "seconds",
        "5",
        "--time-limit",
        "0.2",
    )
    assert result.exit_code == 1
    assert " timed_out: TimeLimitExceeded: " in result.stderr.splitlines()[0]


@pytest.mark.timing
def test_run_that_waits_less_than_the_task_takes_says_how_to_follow_it(
    live_server: str, tokens: dict[str, str]
) -> None:
    result = on(
        live_server, tokens["run"], "run", "-d", "Sleepy", "-a", "seconds", "2", "--timeout", "0.3"
    )
    assert result.exit_code == 1
    assert "has not ended after 0.3 s; it runs on." in result.stderr
    assert f"celeriac -s {live_server} tasks watch -d Sleepy " in result.stderr


# --- finding the workflow's frame --------------------------------------------------------------

_CHAINED = """\
Traceback (most recent call last):
  File "/srv/celeriac/workers/runtime.py", line 308, in _run
    result = self._await(run, future)
             ^^^^^^^^^^^^^^^^^^^^^^^^
  File "/srv/deployments/Shop/src/flows/pay.py", line 12, in charge
    return gateway.charge(amount)
  File "/srv/venv/lib/python3.12/site-packages/httpx/_client.py", line 900, in post
    raise HTTPError("down")
httpx.HTTPError: down

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/usr/lib/python3.12/asyncio/tasks.py", line 277, in __step
    result = coro.send(None)
  File "/srv/celeriac/app/cli/failures.py", line 1, in wrap
    raise PaymentFailed() from exc
PaymentFailed
"""


def test_the_workflows_frame_is_the_last_one_of_neither_a_library_nor_celeriac() -> None:
    frame = own_frame(_CHAINED)
    assert frame is not None
    assert (frame.path, frame.line, frame.function) == (
        "/srv/deployments/Shop/src/flows/pay.py",
        12,
        "charge",
    )
    assert frame.lines() == [
        '  File "/srv/deployments/Shop/src/flows/pay.py", line 12, in charge',
        "    return gateway.charge(amount)",
    ]


def test_a_trace_of_libraries_only_has_no_workflow_frame() -> None:
    only_libraries = "\n".join(
        line for line in _CHAINED.splitlines() if "Shop" not in line and "gateway" not in line
    )
    assert own_frame(only_libraries) is None
