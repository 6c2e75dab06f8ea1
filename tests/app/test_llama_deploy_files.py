"""LlamaDeploy 0.8.1's own deployment files, unchanged, deployed and run through the HTTP API;
then the same files in the layout before 0.8 (``name: ./src``, ``path: workflow:...``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from config.settings import Settings
from tests.app.conftest import assert_error, ok, poll, wait_for_task
from tests.conftest import REPO, deploy

pytestmark = [pytest.mark.llama_index, pytest.mark.usefixtures("no_task_left_behind")]

#: LlamaDeploy's repository, as far as its deployment files go (see its README).
LLAMA_DEPLOY = REPO / "tests" / "fixtures" / "llama_deploy"
QUICK_START = LLAMA_DEPLOY / "examples" / "quick_start" / "quick_start.yml"
E2E = LLAMA_DEPLOY / "e2e_tests" / "apiserver" / "deployments"
RC = LLAMA_DEPLOY / "e2e_tests" / "apiserver" / "rc" / "deployment.yml"
#: The clone URL LlamaDeploy's git files name.
GITHUB = "https://github.com/run-llama/llama_deploy.git"
HUMAN_RESPONSE = "llama_index.core.workflow.events.HumanResponseEvent"


def run(client: FlaskClient, deployment: str, service_id: str | None = None, **kwargs: Any) -> Any:
    """``tasks/run`` with LlamaDeploy's body (input as a JSON string); the result."""
    body: dict[str, Any] = {"input": json.dumps(kwargs)}
    if service_id is not None:
        body["service_id"] = service_id
    return ok(client.post(f"/deployments/{deployment}/tasks/run", json=body))


def streamed(client: FlaskClient, deployment: str, task: dict[str, Any]) -> list[dict[str, Any]]:
    """A task's NDJSON event stream, as LlamaDeploy's ``Task.events()`` reads it."""
    url = f"/deployments/{deployment}/tasks/{task['task_id']}/events"
    response = client.get(url, query_string={"session_id": task["session_id"]})
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines() if line]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The usual settings, where git may also clone the ``file://`` mirror of GitHub below
    (git's own ``GIT_ALLOW_PROTOCOL`` refuses a URL rewritten to a scheme not allowed)."""
    return settings.replace(git_schemes="https,file")


@pytest.fixture
def github_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local git repository of LlamaDeploy's files, which git clones in place of GitHub."""
    repo = tmp_path / "llama_deploy"
    shutil.copytree(LLAMA_DEPLOY, repo, ignore=shutil.ignore_patterns("__pycache__"))
    for command in (
        ["init", "--quiet", "--initial-branch=main"],
        ["add", "--all"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "files"],
    ):
        subprocess.run(["git", "-C", str(repo), *command], check=True)
    # git's own URL rewriting: the deployment files keep naming GitHub.
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", f"url.file://{repo}.insteadOf")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", GITHUB)
    return repo


# -- LlamaDeploy 0.8.1's layout ----------------------------------------------------------------


def test_quick_start_deploys_and_runs(client: FlaskClient) -> None:
    # When LlamaDeploy's quick start file is deployed as its README says
    deployment = ok(deploy(client, QUICK_START))
    # Then it is stored with its one service, and its Next.js UI is named as not served
    assert deployment["name"] == "QuickStart"
    assert [s["name"] for s in deployment["services"]] == ["echo_workflow"]
    assert [w.split(":")[0] for w in deployment["warnings"]] == ["ui is accepted and not served"]
    # And its workflow answers through the default service
    assert run(client, "QuickStart", message="Hello!") == "Message received: Hello!"


def test_a_package_named_by_the_source_folder(client: FlaskClient) -> None:
    # deployment2.yml: path src:my_workflow, and a default-service that names no service
    deployment = ok(deploy(client, E2E / "deployment2.yml"))
    assert "default-service 'dummy_workflow'" in deployment["warnings"][0]
    body = assert_error(
        client.post("/deployments/TestDeployment2/tasks/run", json={"input": "{}"}), 400
    )
    assert "no default-service" in body["message"]
    assert run(client, "TestDeployment2", "test-workflow") == "Done."


def test_env_files_resolve_from_the_deployment_folder_and_win(client: FlaskClient) -> None:
    ok(deploy(client, E2E / "deployment_env_local.yml"))
    result = run(client, "EnvironmentVariablesLocal")
    assert result == "var_1: z, var_2: y, api_key: 123"


def test_streaming_events_arrive_in_order(client: FlaskClient) -> None:
    ok(deploy(client, E2E / "deployment_streaming.yml"))
    task = ok(client.post("/deployments/Streaming/tasks/create", json={"input": "{}"}))
    events = streamed(client, "Streaming", task)
    assert [e.get("text") for e in events[:-1]] == [f"message number {n}" for n in (1, 2, 3)]
    assert wait_for_task(client, "Streaming", task["task_id"])["result"] == "Done."


def test_human_in_the_loop_with_llama_index_core_events(client: FlaskClient) -> None:
    ok(deploy(client, E2E / "deployment_hitl.yml"))
    task = ok(client.post("/deployments/HumanInTheLoop/tasks/create", json={"input": "{}"}))
    url = f"/deployments/HumanInTheLoop/tasks/{task['task_id']}"
    session = {"session_id": task["session_id"]}
    poll(lambda: ok(client.get(url))["status"], lambda status: status == "waiting_input")
    # The answer as LlamaDeploy's Client sends it: llama-index-core's class, serialized
    answer = {"__is_pydantic": True, "value": {"response": "42"}, "qualified_name": HUMAN_RESPONSE}
    body = {"service_id": "hitl_workflow", "event_obj_str": json.dumps(answer)}
    assert ok(client.post(f"{url}/events", json=body, query_string=session)) == body
    results = poll(
        lambda: ok(client.get(f"{url}/results", query_string=session)), lambda r: r is not None
    )
    assert results["result"] == "42"


def test_autodeploy_folder_file(client: FlaskClient) -> None:
    ok(deploy(client, RC))
    assert run(client, "AutoDeployed") == "Done."


def test_git_files_clone_and_reload(client: FlaskClient, github_mirror: Path) -> None:
    # deployment1.yml: the e2e package from LlamaDeploy's repository
    ok(deploy(client, E2E / "deployment1.yml"))
    assert run(client, "TestDeployment1", "test-workflow") == "Done."
    # deployment_reload1.yml, then reloaded with deployment_reload2.yml
    ok(deploy(client, E2E / "deployment_reload1.yml"))
    assert run(client, "ReloadMe", data="bar") == "I have received:bar"
    ok(deploy(client, E2E / "deployment_reload2.yml", reload=True))
    assert run(client, "ReloadMe", data="bar") == "Ho ricevuto:bar"
    # deployment_env_git.yml: env-files from the clone, no default service
    ok(deploy(client, E2E / "deployment_env_git.yml"))
    result = run(client, "EnvironmentVariablesGit", "workflow_git")
    assert result == "var_1: x, var_2: y, api_key: 123"


# -- the layout before 0.8 ---------------------------------------------------------------------


def older_layout(text: str) -> str:
    """A 0.8 file as it was written before: the source named ``./src``, paths inside it."""
    text = text.replace("name: src\n", "name: ./src\n")
    text = re.sub(r"path: src/", "path: ", text)
    return re.sub(r"- src/", "- ", text)


@pytest.mark.parametrize(
    ("file", "service", "expected"),
    [
        (QUICK_START, None, "Message received: "),
        (E2E / "deployment_env_local.yml", None, "var_1: z, var_2: y, api_key: 123"),
        (E2E / "deployment_streaming.yml", None, "Done."),
    ],
    ids=lambda value: value.name if isinstance(value, Path) else None,
)
def test_older_layout_still_deploys(
    client: FlaskClient, tmp_path: Path, file: Path, service: str | None, expected: str
) -> None:
    # Given the file rewritten in the older layout, beside the same source folder
    folder = tmp_path / "project"
    shutil.copytree(file.parent, folder, ignore=shutil.ignore_patterns("__pycache__"))
    rewritten = folder / file.name
    rewritten.write_text(older_layout(file.read_text()))
    assert "path: src/" not in rewritten.read_text()
    # Then it deploys and runs the same workflow
    name = ok(deploy(client, rewritten))["name"]
    assert run(client, name, service) == expected
