"""LlamaDeploy 0.8.1's own clients, unmodified, against ``celeriac serve``: ``llamactl`` and the
Python ``Client``, each from a separate environment that has ``llama-deploy==0.8.1`` installed
(it pins an older llama-index, so it cannot share Celeriac's)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO
from tests.e2e.conftest import script
from tests.support.processes import Processes, free_port, poll

pytestmark = pytest.mark.e2e

#: Where the LlamaDeploy environment is made once and kept (git ignores it).
VENV = REPO / ".venv-llama-deploy"
LLAMA_DEPLOY = "llama-deploy==0.8.1"
FIXTURES = REPO / "tests" / "fixtures" / "llama_deploy"
QUICK_START = FIXTURES / "examples" / "quick_start" / "quick_start.yml"
E2E = FIXTURES / "e2e_tests" / "apiserver" / "deployments"
SCENARIOS = Path(__file__).with_name("llama_deploy_scenarios.py")
GITHUB = "https://github.com/run-llama/llama_deploy.git"


@pytest.fixture(scope="session")
def llama_deploy_bin() -> Path:
    """The ``bin`` folder of an environment with LlamaDeploy 0.8.1, made on first use."""
    bin_dir = VENV / "bin"
    if not (bin_dir / "llamactl").is_file():
        shutil.rmtree(VENV, ignore_errors=True)
        steps = [
            [sys.executable, "-m", "venv", str(VENV)],
            [
                str(bin_dir / "pip"),
                "install",
                "--quiet",
                "--disable-pip-version-check",
                LLAMA_DEPLOY,
            ],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                pytest.fail(f"could not install {LLAMA_DEPLOY}: {done.stdout}{done.stderr}")
    return bin_dir


@pytest.fixture
def github_mirror(tmp_path: Path) -> dict[str, str]:
    """Git settings that clone a local repository of LlamaDeploy's files in place of GitHub."""
    repo = tmp_path / "llama_deploy"
    shutil.copytree(FIXTURES, repo, ignore=shutil.ignore_patterns("__pycache__"))
    for command in (
        ["init", "--quiet", "--initial-branch=main"],
        ["add", "--all"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "files"],
    ):
        subprocess.run(["git", "-C", str(repo), *command], check=True)
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": f"url.file://{repo}.insteadOf",
        "GIT_CONFIG_VALUE_0": GITHUB,
    }


def serve(
    tmp_path: Path, processes: Processes, github_mirror: dict[str, str], token: str = ""
) -> str:
    """Start an embedded ``celeriac serve`` in its own process; its URL, with ``token`` (if
    any) as the URL's password, as LlamaDeploy's clients can send one."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
    env |= github_mirror | {"CELERIAC_DATA_DIR": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1"}
    # git rewrites GitHub's https URL to the file:// mirror: the server must allow both.
    env["CELERIAC_GIT_SCHEMES"] = "https,file"
    # A server with a token is not open: it takes local sources only from the folders named.
    env["CELERIAC_SOURCE_ROOTS"] = str(FIXTURES)
    process = processes.start(
        "serve", [script("celeriac"), "serve", "--port", str(port)], env, cwd=tmp_path
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    def answers() -> bool:
        assert process.alive(), process.output()
        try:
            return httpx.get(f"{url}/status/", timeout=2.0, headers=headers).status_code == 200
        except httpx.TransportError:
            return False

    poll(answers, bool, 30.0, "celeriac serve answering")
    return f"http://token:{token}@127.0.0.1:{port}" if token else url


@pytest.fixture
def server(tmp_path: Path, processes: Processes, github_mirror: dict[str, str]) -> Iterator[str]:
    """An embedded ``celeriac serve`` in its own process; its URL."""
    yield serve(tmp_path, processes, github_mirror)


@pytest.fixture
def protected_server(
    tmp_path: Path, processes: Processes, github_mirror: dict[str, str]
) -> Iterator[str]:
    """An embedded ``celeriac serve`` with an admin token; its URL with the token in it."""
    done = subprocess.run(
        [script("celeriac"), "tokens", "create", "--scope", "admin"],
        env={k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
        | {"CELERIAC_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    yield serve(tmp_path, processes, github_mirror, token=done.stdout.strip())


def llamactl(
    bin_dir: Path, server: str, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run ``llamactl -s SERVER ARGS``, its profiles in a folder of this test's own."""
    argv = [str(bin_dir / "llamactl"), "-s", server, *args]
    env = os.environ | {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)


def test_llamactl_deploys_and_runs_llama_deploys_files(
    llama_deploy_bin: Path, server: str, tmp_path: Path
) -> None:
    def ok(*args: str) -> str:
        done = llamactl(llama_deploy_bin, server, tmp_path, *args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout.strip()

    # The quick start, exactly as LlamaDeploy's README runs it
    assert ok("deploy", str(QUICK_START)) == "Deployment successful: QuickStart"
    assert ok("run", "-d", "QuickStart", "-a", "message", "Hello!") == "Message received: Hello!"
    status = ok("status")
    assert status.startswith("LlamaDeploy is up and running.")
    assert "- QuickStart" in status
    # A session, and a task run in it
    session = ok("sessions", "create", "-d", "QuickStart")
    session_id = session.split("session_id='")[1].split("'")[0]
    assert ok("run", "-d", "QuickStart", "-i", session_id, "-a", "message", "hi") == (
        "Message received: hi"
    )
    # A package named by its source folder, a service named on the command line
    ok("deploy", str(E2E / "deployment2.yml"))
    assert ok("run", "-d", "TestDeployment2", "-s", "test-workflow") == "Done."
    # A git source, reloaded with another file of the same name
    ok("deploy", str(E2E / "deployment_reload1.yml"))
    assert ok("run", "-d", "ReloadMe", "-a", "data", "bar") == "I have received:bar"
    ok("deploy", "--reload", str(E2E / "deployment_reload2.yml"))
    assert ok("run", "-d", "ReloadMe", "-a", "data", "bar") == "Ho ricevuto:bar"
    # Env files resolved from the deployment folder win over inline env
    ok("deploy", str(E2E / "deployment_env_local.yml"))
    assert ok("run", "-d", "EnvironmentVariablesLocal") == "var_1: z, var_2: y, api_key: 123"
    # A mistake is an error, not a hang: no default service to run
    refused = llamactl(llama_deploy_bin, server, tmp_path, "run", "-d", "TestDeployment2")
    assert refused.returncode != 0
    assert "400" in refused.stderr


def test_llama_deploy_client_scenarios(llama_deploy_bin: Path, server: str) -> None:
    done = subprocess.run(
        [str(llama_deploy_bin / "python"), str(SCENARIOS), server, str(FIXTURES)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["deployed"] == seen["got"] == "QuickStart"
    assert seen["status"] == ["Healthy", ["QuickStart"]]
    assert seen["run"] == "Message received: from the Client"
    assert seen["session_task"] == [True, "Message received: in a session"]
    assert len(seen["sessions"]) == 1
    assert seen["sessions_after_delete"] == []
    assert seen["stream"][:3] == [f"message number {n}" for n in (1, 2, 3)]
    assert seen["stream_result"] == "Done."
    assert seen["question"] == "Enter a number: "
    assert seen["sent_to"] == "hitl_workflow"
    assert seen["answer"] == "42"


def test_llamactl_and_the_client_send_a_token_given_in_the_server_url(
    llama_deploy_bin: Path, protected_server: str, tmp_path: Path
) -> None:
    """httpx sends a URL's user and password as HTTP Basic: the README's way to give
    LlamaDeploy 0.8.1's unmodified clients a token."""
    # The Python Client's every call, event streams included, carries it
    done = subprocess.run(
        [str(llama_deploy_bin / "python"), str(SCENARIOS), protected_server, str(FIXTURES)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["run"] == "Message received: from the Client"
    assert seen["stream_result"] == "Done."
    assert seen["answer"] == "42"
    # And so do llamactl's
    reloaded = llamactl(
        llama_deploy_bin, protected_server, tmp_path, "deploy", "--reload", str(QUICK_START)
    )
    assert reloaded.returncode == 0, reloaded.stderr
    run = llamactl(
        llama_deploy_bin,
        protected_server,
        tmp_path,
        "run",
        "-d",
        "QuickStart",
        "-a",
        "message",
        "t",
    )
    assert run.stdout.strip() == "Message received: t", run.stderr
    # Without the token llamactl is refused
    anonymous = "http://" + protected_server.split("@", 1)[1]
    refused = llamactl(llama_deploy_bin, anonymous, tmp_path, "run", "-d", "QuickStart")
    assert refused.returncode != 0
    assert "401" in refused.stderr
