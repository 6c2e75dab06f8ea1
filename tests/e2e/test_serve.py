"""End to end: ``celeriac serve`` as a real process, driven by the ``celeriac`` CLI over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.cli_tables import column

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
COMMAND_TIMEOUT = 60.0


def celeriac_script() -> Path:
    """The ``celeriac`` console script of the running interpreter's environment."""
    beside = Path(sys.executable).parent / "celeriac"
    if beside.is_file():
        return beside
    found = shutil.which("celeriac")
    if found is None:
        pytest.fail(f"no celeriac script next to {sys.executable} nor on PATH")
    return Path(found)


def free_port() -> int:
    """A local TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(
    args: list[str], *, cwd: Path, env: dict[str, str], log: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Start ``celeriac serve ARGS --port P``, wait until it answers; always kill it at the end."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(celeriac_script()), "serve", *args, "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_ready(proc, url, log)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


def wait_until_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Poll ``GET /status/`` until it answers 200, failing if the process exits or time runs out."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"celeriac serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/status/", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"celeriac serve not ready after {READY_TIMEOUT:g} s:\n{log.read_text()}")


def cli(url: str, *args: str, env: dict[str, str], cwd: Path) -> str:
    """Run ``celeriac -s URL ARGS...`` as a process; assert it succeeded and return its stdout."""
    done = subprocess.run(
        [str(celeriac_script()), "-s", url, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    assert done.returncode == 0, f"celeriac {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.mark.e2e
def test_serve_runs_workflows_and_keeps_state_across_restarts(
    tmp_path: Path, project: Path
) -> None:
    """``celeriac serve FILE`` serves the CLI, stops on SIGTERM, and restarts with its state."""
    # Given a private data folder, profile file and working directory
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
    env |= {"CELERIAC_DATA_DIR": str(data_dir), "CELERIAC_CONFIG": str(tmp_path / "prof.yml")}
    quickstart = project / "quickstart" / "deployment.yml"
    multistep = project / "multistep" / "deployment.yml"

    def run(url: str, *args: str) -> str:
        return cli(url, *args, env=env, cwd=tmp_path)

    # When the server starts with the quick start
    with serving([str(quickstart)], cwd=tmp_path, env=env, log=tmp_path / "serve1.log") as (
        proc,
        url,
    ):
        # Then the CLI sees it healthy, serving the quick start
        status = run(url, "status")
        assert "Healthy" in status
        assert column(status, "DEPLOYMENT", block=1) == ["QuickStart"]
        # And runs its workflow on the in-process workers
        assert run(url, "run", "-d", "QuickStart", "-a", "message", "hello") == (
            "Message received: hello\n"
        )
        # And deploys and runs a second, multi-step deployment
        assert run(url, "deploy", str(multistep)).strip() == "Deployment successful: MultiStep"
        result = run(url, "run", "-d", "MultiStep", "-a", "message", "hello_world")
        assert result.strip() == "hello_world_result_result_result"
        assert column(run(url, "deployments", "list"), "NAME") == ["MultiStep", "QuickStart"]
        session_id = json.loads(run(url, "sessions", "create", "-d", "QuickStart"))["session_id"]
        assert session_id
        # And deletes the second deployment
        assert "MultiStep" in run(url, "deployments", "delete", "MultiStep", "--yes")
        assert column(run(url, "deployments", "list"), "NAME") == ["QuickStart"]

        # When the server gets SIGTERM
        proc.send_signal(signal.SIGTERM)
        # Then it exits cleanly in time
        try:
            code = proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"celeriac serve still running {STOP_TIMEOUT:g} s after SIGTERM")
        log = (tmp_path / "serve1.log").read_text()
        assert code == 0, log
        assert "Traceback" not in log
    # And its SQLite database lives in CELERIAC_DATA_DIR, not in the working directory
    assert (data_dir / "celeriac.db").is_file()
    assert f"sqlite:///{(data_dir / 'celeriac.db').resolve()}" in log
    assert not (tmp_path / ".celeriac").exists()

    # When the server restarts on the same data folder, without a file
    with serving([], cwd=tmp_path, env=env, log=tmp_path / "serve2.log") as (_proc, url):
        # Then the deployments, sessions and tasks of the first run are still there
        assert column(run(url, "deployments", "list"), "NAME") == ["QuickStart"]
        assert session_id in column(run(url, "sessions", "list", "-d", "QuickStart"), "SESSION")
        assert column(run(url, "tasks", "list", "-d", "QuickStart"), "STATUS") == ["succeeded"]
        # And the quick start still runs
        assert run(url, "run", "-d", "QuickStart", "-a", "message", "again") == (
            "Message received: again\n"
        )


@pytest.mark.e2e
def test_tasks_in_flight_when_the_embedded_server_is_killed_run_after_it_restarts(
    tmp_path: Path, sleepy: Path
) -> None:
    """The embedded broker's messages die with its process: a restart queues them again."""
    # Given the embedded server with a deployment whose tasks sleep, on a private data folder
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
    env |= {"CELERIAC_DATA_DIR": str(tmp_path / "data"), "CELERIAC_WORKER_CONCURRENCY": "2"}
    with serving([str(sleepy)], cwd=tmp_path, env=env, log=tmp_path / "serve1.log") as (
        proc,
        url,
    ):
        # When five tasks are sent, two of them start, and the server is killed (SIGKILL)
        ids = [
            httpx.post(
                f"{url}/deployments/Sleepy/tasks/create",
                json={"input": json.dumps({"n": n, "seconds": 5})},
                timeout=10,
            ).json()["task_id"]
            for n in range(5)
        ]
        deadline = time.monotonic() + READY_TIMEOUT
        while statuses(url, ids).count("running") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert statuses(url, ids).count("running") == 2, statuses(url, ids)
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)
    # When it restarts on the same data folder, with tasks that now sleep no more
    env["CELERIAC_WORKER_CONCURRENCY"] = "8"
    with serving([], cwd=tmp_path, env=env, log=tmp_path / "serve2.log") as (_proc, url):
        # Then every task runs and succeeds: the two killed mid-run on a second attempt
        deadline = time.monotonic() + READY_TIMEOUT
        while set(statuses(url, ids)) != {"succeeded"} and time.monotonic() < deadline:
            time.sleep(0.2)
        tasks = [httpx.get(f"{url}/deployments/Sleepy/tasks/{i}", timeout=10).json() for i in ids]
    assert [t["status"] for t in tasks] == ["succeeded"] * 5, tasks
    assert [t["result"] for t in tasks] == [f"slept {n}" for n in range(5)]
    assert sorted(t["attempts"] for t in tasks) == [1, 1, 1, 2, 2]
    # And each of those two shows its first run lost with the server, its second succeeded
    for twice in (t for t in tasks if t["attempts"] == 2):
        first, second = twice["attempt_history"]
        assert (first["attempt"], first["outcome"]) == (1, "lost")
        assert "queued again" in first["error"]["message"]
        assert (second["attempt"], second["outcome"]) == (2, "succeeded")
        assert first["started_at"] < first["finished_at"] <= second["started_at"]
    assert (
        "5 unfinished task(s) of an earlier run are queued again"
        in (tmp_path / "serve2.log").read_text()
    )


def statuses(url: str, ids: list[str]) -> list[str]:
    """The status of each task, in order."""
    return [
        httpx.get(f"{url}/deployments/Sleepy/tasks/{i}", timeout=10).json()["status"] for i in ids
    ]
