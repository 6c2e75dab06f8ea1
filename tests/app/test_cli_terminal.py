"""``celeriac run`` on a terminal and off it: the live status line, questions asked at the
prompt or answered by the printed command, and the word about a service no worker serves.

A terminal is a pseudo-terminal (``pty``) the CLI's process writes to; off a terminal, its
output is piped (or captured by click's CliRunner).
"""

from __future__ import annotations

import os
import pty
import re
import select
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from app.cli.main import cli
from app.sdk import Client
from tests.app.conftest import SLEEPY
from tests.conftest import HITL, QUICKSTART

#: Each test waits on real time (tasks that nap, waits for a notice): once per run.
pytestmark = pytest.mark.timing

#: Bound on any one wait; only a failing test waits this long.
DEADLINE = 20.0
_CLI = "from app.cli.main import main; main()"


@pytest.fixture(autouse=True)
def isolated_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep profiles in tmp_path and start with no server or token in the environment."""
    monkeypatch.setenv("CELERIAC_CONFIG", str(tmp_path / "config" / "profiles.yml"))
    monkeypatch.delenv("CELERIAC_SERVER", raising=False)
    monkeypatch.delenv("CELERIAC_TOKEN", raising=False)


@pytest.fixture
def sdk(live_server: str) -> Iterator[Client]:
    """A client of the live server, to set the scene."""
    with Client(live_server, timeout=DEADLINE) as client:
        yield client


def on(server: str, *args: str) -> Result:
    """``celeriac -s SERVER ARGS...`` in this process, off a terminal."""
    return CliRunner().invoke(cli, ["-s", server, *args], prog_name="celeriac")


class Terminal:
    """The CLI run in its own process with stdin and stderr on one pseudo-terminal and
    stdout on another, as a person's shell runs it (both are terminals)."""

    def __init__(self, *args: str) -> None:
        self._out, out_slave = pty.openpty()
        self._err, err_slave = pty.openpty()
        self.process = subprocess.Popen(
            [sys.executable, "-c", _CLI, *args],
            stdin=err_slave,
            stdout=out_slave,
            stderr=err_slave,
            env={**os.environ, "COLUMNS": "200", "PYTHONIOENCODING": "utf-8"},
        )
        os.close(out_slave)
        os.close(err_slave)
        self.stdout = ""
        self.stderr = ""
        self._open = {self._out, self._err}

    def read(self, until: str | None = None) -> None:
        """Read what the process writes until ``until`` shows on stderr (or it ends)."""
        deadline = time.monotonic() + DEADLINE
        while self._open and (until is None or until not in self.stderr):
            assert time.monotonic() < deadline, (self.stdout, self.stderr)
            ready, _, _ = select.select(list(self._open), [], [], 0.1)
            for fd in ready:
                try:
                    chunk = os.read(fd, 65536).decode()
                except OSError:  # EIO: the process closed its end
                    chunk = ""
                if not chunk:
                    self._open.discard(fd)
                elif fd == self._out:
                    self.stdout += chunk
                else:
                    self.stderr += chunk

    def type(self, text: str) -> None:
        """Type ``text`` at the terminal."""
        os.write(self._err, text.encode())

    def wait(self) -> int:
        """Read to the end; the exit code."""
        self.read()
        code = self.process.wait(timeout=DEADLINE)
        os.close(self._out)
        os.close(self._err)
        return code


def test_on_a_terminal_run_shows_the_status_and_elapsed_time_then_the_result(
    live_server: str, sdk: Client
) -> None:
    # Given a task that takes a second
    sdk.deployments.create(SLEEPY)
    # When it runs on a terminal
    shell = Terminal("-s", live_server, "run", "-d", "Sleepy", "-a", "seconds", "1")
    code = shell.wait()
    # Then the result alone is on stdout (a terminal turns \n into \r\n)
    assert code == 0, shell.stderr
    assert shell.stdout == "slept 1s\r\n"
    # And stderr showed a line rewritten in place: the status and the seconds elapsed,
    # turning, and erased at the end
    drawn = [line for line in shell.stderr.split("\r") if line.strip("\x1b[K")]
    assert len(drawn) >= 5, shell.stderr
    statuses = {re.sub(r"^\S+ ", "", line).split("  ")[0] for line in drawn}
    assert "running" in statuses, drawn
    seconds = [float(m) for m in re.findall(r"  (\d+\.\d+) s  task ", shell.stderr)]
    assert seconds == sorted(seconds) and seconds[-1] >= 0.8, seconds
    assert shell.stderr.endswith("\r\x1b[K")


def test_piped_run_prints_the_result_alone(live_server: str, sdk: Client) -> None:
    # Given a task that takes a moment
    sdk.deployments.create(SLEEPY)
    # When its output is piped
    piped = subprocess.run(
        [
            sys.executable,
            "-c",
            _CLI,
            "-s",
            live_server,
            "run",
            "-d",
            "Sleepy",
            "-a",
            "seconds",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    # Then there is no status line: the result on stdout, nothing on stderr
    assert (piped.returncode, piped.stdout, piped.stderr) == (0, "slept 0.5s\n", "")


def test_on_a_terminal_a_question_is_asked_and_answered(live_server: str, sdk: Client) -> None:
    # Given a workflow that asks a question
    sdk.deployments.create(HITL)
    # When it runs with --stream on a terminal
    shell = Terminal("-s", live_server, "run", "-d", "HumanInTheLoop", "--stream")
    # Then the question is asked at the prompt
    shell.read(until="What is the answer?: ")
    assert shell.stdout.startswith("InputRequiredEvent ")
    # And the answer typed there is the task's result
    shell.type("forty-two\n")
    assert shell.wait() == 0, shell.stderr
    assert shell.stdout.splitlines()[-1] == "forty-two"
    (task,) = sdk.tasks.list("HumanInTheLoop")
    assert (task.status, task.result) == ("succeeded", "forty-two")


def test_off_a_terminal_a_question_prints_the_command_that_answers_it(
    live_server: str, sdk: Client
) -> None:
    # Given a workflow that asks a question, run with --stream, its output piped
    sdk.deployments.create(HITL)
    process = subprocess.Popen(
        [sys.executable, "-c", _CLI, "-s", live_server, "run", "-d", "HumanInTheLoop", "--stream"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # When the question comes, stderr says it and gives the exact command to answer it
        assert process.stderr is not None
        assert process.stderr.readline() == (
            f"Task {sdk.tasks.list('HumanInTheLoop')[0].task_id} asks: What is the answer?\n"
        )
        assert process.stderr.readline() == "Answer it with:\n"
        command = shlex.split(process.stderr.readline())
        assert command[:3] == ["celeriac", "-s", live_server]
        # And that command, with the answer in place, answers it
        answered = CliRunner().invoke(
            cli, [arg.replace("ANSWER", "by pipe") for arg in command[1:]], prog_name="celeriac"
        )
        assert answered.exit_code == 0, answered.output
        # And the run, following on, prints the result and ends
        out, err = process.communicate(timeout=DEADLINE)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert out.splitlines()[-1] == "by pipe"


def test_a_task_queued_behind_another_on_the_embedded_server_says_nothing_of_workers(
    live_server: str, sdk: Client
) -> None:
    # Given a session busy with a task that takes a second and a half
    sdk.deployments.create(SLEEPY)
    busy = sdk.tasks.create("Sleepy", {"seconds": "1.5"})
    # When another task of the session waits its turn, queued beyond the CLI's look at the
    # service's workers
    waited = on(
        live_server, "run", "-d", "Sleepy", "-i", busy.session_id or "", "-a", "seconds", "0"
    )
    # Then the embedded server's worker is listed: nothing is said of workers
    assert waited.exit_code == 0, waited.output
    assert (waited.stdout, waited.stderr) == ("slept 0s\n", "")
    assert sdk.tasks.get("Sleepy", busy.task_id).status == "succeeded"


def test_run_of_a_quick_task_says_nothing_just_after_the_deployment_is_made(
    live_server: str,
) -> None:
    deployed = on(live_server, "deploy", str(QUICKSTART))
    assert deployed.exit_code == 0, deployed.output
    ran = on(live_server, "run", "-d", "QuickStart", "-a", "message", "hi")
    assert (ran.exit_code, ran.stdout, ran.stderr) == (0, "Message received: hi\n", "")
