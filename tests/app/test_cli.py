"""Tests of the ``celeriac`` command line, driven with click's CliRunner against a live server."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from app.cli.main import cli
from tests.app.conftest import poll
from tests.conftest import QUICKSTART
from tests.support.cli_tables import column, rows
from workers.protocol import service_queue

FAILING_WORKFLOW = '''
"""A workflow whose only step raises."""

from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent


class FailingWorkflow(Workflow):
    """Always fails."""

    @step
    async def explode(self, ev: StartEvent) -> StopEvent:
        """Raise an error the caller must see."""
        raise ValueError("the failing workflow exploded on purpose")


failing_workflow = FailingWorkflow(timeout=30)
'''

FAILING_DEPLOYMENT = """
name: Failing
control-plane:
  port: 8000
default-service: failing_workflow
services:
  failing_workflow:
    name: Failing Workflow
    source:
      type: local
      name: ./src
    path: workflow:failing_workflow
"""

# Three independent mistakes, each in its own field.
INVALID_DEPLOYMENT = """
name: Broken
control-plane:
  port: 70000
default-service: echo_workflow
services:
  echo_workflow:
    name: Echo Workflow
    source:
      type: docker
      name: some/image
    path: workflow:echo_workflow
    no-such-option: 1
"""


@pytest.fixture(autouse=True)
def isolated_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep profiles in tmp_path and start with no server in the environment."""
    path = tmp_path / "config" / "profiles.yml"
    monkeypatch.setenv("CELERIAC_CONFIG", str(path))
    monkeypatch.delenv("CELERIAC_SERVER", raising=False)
    return path


@pytest.fixture
def closed_port_url() -> str:
    """The URL of a local port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def celeriac(*args: str) -> Result:
    """Run the ``celeriac`` command in this process."""
    return CliRunner().invoke(cli, list(args), prog_name="celeriac", catch_exceptions=False)


def on(server: str, *args: str) -> Result:
    """Run ``celeriac -s SERVER ARGS...``."""
    return celeriac("-s", server, *args)


def deploy_quickstart(server: str) -> None:
    """Deploy the quick start example, asserting it worked."""
    result = on(server, "deploy", str(QUICKSTART))
    assert result.exit_code == 0, result.output


def write_failing_deployment(folder: Path) -> Path:
    """A deployment of one workflow that raises; returns its YAML file."""
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "workflow.py").write_text(FAILING_WORKFLOW)
    path = folder / "deployment.yml"
    path.write_text(FAILING_DEPLOYMENT)
    return path


def task_ids(server: str, deployment: str, *extra: str) -> list[str]:
    """The task ids ``tasks list`` prints, in order."""
    result = on(server, "tasks", "list", "-d", deployment, *extra)
    assert result.exit_code == 0, result.output
    return column(result.stdout, "TASK")


# --- deploy ------------------------------------------------------------------------------------


def test_deploy_prints_the_deployment_name(live_server: str) -> None:
    """``deploy FILE`` creates the deployment and says so."""
    # When the quick start is deployed
    result = on(live_server, "deploy", str(QUICKSTART))
    # Then the CLI reports success with the deployment's name
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "Deployment successful: QuickStart"
    assert column(on(live_server, "deployments", "list").stdout, "NAME") == ["QuickStart"]


def test_deploying_twice_fails_unless_reload(live_server: str) -> None:
    """A second ``deploy`` of the same name is refused; ``--reload`` replaces it."""
    # Given the quick start is deployed
    deploy_quickstart(live_server)
    # When it is deployed again without --reload
    again = on(live_server, "deploy", str(QUICKSTART))
    # Then it fails with a message that says why and how to fix it
    assert again.exit_code != 0
    assert "already exists" in again.output
    assert again.output.endswith("(celeriac deploy --reload replaces it)\n")
    assert "reload" in again.output
    # And with --reload it succeeds and bumps the version
    reloaded = on(live_server, "deploy", "--reload", str(QUICKSTART))
    assert reloaded.exit_code == 0, reloaded.output
    assert reloaded.stdout.strip() == "Deployment successful: QuickStart"
    described = json.loads(on(live_server, "deployments", "get", "QuickStart", "-o", "json").stdout)
    assert described["version"] == 2


def test_deploy_invalid_yaml_names_every_bad_field(live_server: str, tmp_path: Path) -> None:
    """An invalid file exits non-zero, lists each bad field with its reason, stores nothing."""
    # Given a file with a port out of range, a docker source and an unknown key
    path = tmp_path / "broken.yml"
    path.write_text(INVALID_DEPLOYMENT)
    # When it is deployed
    result = on(live_server, "deploy", str(path))
    # Then the CLI fails and names every bad field with a reason
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert "not valid" in result.output
    field_lines = {
        line.strip().partition(":")[0]: line.strip().partition(":")[2].strip()
        for line in result.output.splitlines()
        if line.startswith("  ")
    }
    assert "control-plane.port" in field_lines, result.output
    assert "services.echo_workflow.source.type" in field_lines, result.output
    assert "services.echo_workflow.no-such-option" in field_lines, result.output
    assert all(reason for reason in field_lines.values()), result.output
    # And nothing was stored
    listed = on(live_server, "deployments", "list")
    assert listed.exit_code == 0, listed.output
    assert "Broken" not in listed.stdout


def test_deploy_with_an_unknown_default_service_warns(live_server: str, tmp_path: Path) -> None:
    """A ``default-service`` that names no service deploys with a warning, as in LlamaDeploy."""
    # Given a copy of the quick start whose default-service names nothing
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "workflow.py").write_text(
        (QUICKSTART.parent / "src" / "workflow.py").read_text()
    )
    path = tmp_path / "deployment.yml"
    path.write_text(
        QUICKSTART.read_text().replace(
            "default-service: echo_workflow", "default-service: no_such_service"
        )
    )
    # When it is deployed
    result = on(live_server, "deploy", str(path))
    # Then it is stored, and the warning names the field on stderr
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "Deployment successful: QuickStart"
    assert "Warning: default-service 'no_such_service' is not a service" in result.stderr
    # And a run that relies on the default service fails with LlamaDeploy's reason
    refused = on(live_server, "run", "-d", "QuickStart")
    assert refused.exit_code != 0
    assert "has no default-service" in refused.stderr
    assert on(live_server, "run", "-d", "QuickStart", "-S", "echo_workflow").exit_code == 0


def test_deploy_of_a_missing_file_is_a_usage_error(live_server: str, tmp_path: Path) -> None:
    """``deploy`` of a path that does not exist fails before calling the server."""
    result = on(live_server, "deploy", str(tmp_path / "nope.yml"))
    assert result.exit_code == 2
    assert "does not exist" in result.output


# --- run ---------------------------------------------------------------------------------------


def test_run_prints_the_result(live_server: str) -> None:
    """``run -d D -a KEY VALUE`` prints the workflow's result."""
    # Given the quick start is deployed
    deploy_quickstart(live_server)
    # When a task runs
    result = on(live_server, "run", "-d", "QuickStart", "-a", "message", "hello")
    # Then its result is printed as is
    assert result.exit_code == 0, result.output
    assert result.stdout == "Message received: hello\n"


def test_run_with_a_named_service(live_server: str) -> None:
    """``run -S SERVICE`` runs that service; an unknown service fails with not found."""
    deploy_quickstart(live_server)
    named = on(live_server, "run", "-d", "QuickStart", "-S", "echo_workflow", "-a", "message", "hi")
    assert named.exit_code == 0, named.output
    assert named.stdout.strip() == "Message received: hi"
    listed = on(live_server, "tasks", "list", "-d", "QuickStart").stdout.split()
    assert "echo_workflow" in listed
    assert "succeeded" in listed
    unknown = on(live_server, "run", "-d", "QuickStart", "--service", "nope", "-a", "message", "x")
    assert unknown.exit_code != 0
    assert "not found" in unknown.output.lower()


def test_run_in_a_session(live_server: str) -> None:
    """``run -i SESSION`` runs the task in that session, which lists it afterwards."""
    # Given a session of the quick start
    deploy_quickstart(live_server)
    created = on(live_server, "sessions", "create", "-d", "QuickStart")
    assert created.exit_code == 0, created.output
    session_id = json.loads(created.stdout)["session_id"]
    # When two tasks run in it (short and long option)
    first = on(live_server, "run", "-d", "QuickStart", "-i", session_id, "-a", "message", "one")
    second = on(
        live_server, "run", "-d", "QuickStart", "--session-id", session_id, "-a", "message", "two"
    )
    # Then both ran and the session holds both tasks
    assert first.exit_code == 0, first.output
    assert first.stdout.strip() == "Message received: one"
    assert second.exit_code == 0, second.output
    assert second.stdout.strip() == "Message received: two"
    got = on(live_server, "sessions", "get", "-d", "QuickStart", session_id, "-o", "json")
    session = json.loads(got.stdout)
    assert len(session["task_ids"]) == 2
    assert task_ids(live_server, "QuickStart", "-i", session_id) == session["task_ids"]


def test_run_with_an_idempotency_key_runs_the_task_once(live_server: str) -> None:
    """``run --idempotency-key KEY`` sent again prints the first run's result and stores no
    other task; ``--stream`` queues under the key too; another run under it is refused."""
    deploy_quickstart(live_server)
    keyed = ("run", "-d", "QuickStart", "-a", "message", "once", "--idempotency-key", "k-1")
    runs = [on(live_server, *keyed) for _ in range(2)]
    assert [(r.exit_code, r.stdout) for r in runs] == [(0, "Message received: once\n")] * 2
    assert len(task_ids(live_server, "QuickStart")) == 1
    streamed = [on(live_server, *keyed[:-1], "k-stream", "--stream") for _ in range(2)]
    assert [(r.exit_code, r.stdout) for r in streamed] == [(0, "Message received: once\n")] * 2
    assert len(task_ids(live_server, "QuickStart")) == 2
    other = on(
        live_server, "run", "-d", "QuickStart", "-a", "message", "x", "--idempotency-key", "k-1"
    )
    assert other.exit_code != 0
    assert "Idempotency-Key 'k-1' was used with a different request" in other.output
    bad = on(live_server, *keyed[:-1], "")
    assert bad.exit_code != 0
    assert "Idempotency-Key: must be 1 to 255 characters long" in bad.output
    assert len(task_ids(live_server, "QuickStart")) == 2


def test_run_on_an_unknown_deployment_fails(live_server: str) -> None:
    """``run`` on a deployment that does not exist exits non-zero with "not found"."""
    result = on(live_server, "run", "-d", "Nowhere", "-a", "message", "hello")
    assert result.exit_code != 0
    assert "not found" in result.output.lower()
    assert "Traceback" not in result.output


def test_run_of_a_failing_workflow_prints_its_error(live_server: str, tmp_path: Path) -> None:
    """A workflow that raises makes ``run`` exit non-zero with the workflow's error message."""
    # Given a deployment whose workflow raises
    path = write_failing_deployment(tmp_path / "failing")
    deployed = on(live_server, "deploy", str(path))
    assert deployed.exit_code == 0, deployed.output
    # When it runs
    result = on(live_server, "run", "-d", "Failing")
    # Then the CLI fails and shows the error, not a traceback of its own
    assert result.exit_code == 1, result.output
    assert "the failing workflow exploded on purpose" in result.output
    assert result.stdout == ""
    # And the task is recorded as failed with its error
    (task_id,) = task_ids(live_server, "Failing")
    task = json.loads(
        on(live_server, "tasks", "get", "-d", "Failing", task_id, "-o", "json").stdout
    )
    assert task["status"] == "failed"
    assert "exploded on purpose" in json.dumps(task["error"])


# --- status ------------------------------------------------------------------------------------


def test_status_shows_health_and_deployments(live_server: str) -> None:
    """``status`` says Healthy and lists the deployments."""
    empty = on(live_server, "status")
    assert empty.exit_code == 0, empty.output
    assert "Healthy" in empty.stdout
    assert "QuickStart" not in empty.stdout
    deploy_quickstart(live_server)
    result = on(live_server, "status")
    assert result.exit_code == 0, result.output
    assert "Healthy" in result.stdout
    assert column(result.stdout, "DEPLOYMENT", block=1) == ["QuickStart"]


def test_status_of_a_closed_port_says_down(closed_port_url: str) -> None:
    """``status`` against nothing exits non-zero and says Down."""
    result = on(closed_port_url, "status")
    assert result.exit_code != 0
    assert "Down" in result.output
    assert "Traceback" not in result.output


def test_commands_against_a_closed_port_fail_cleanly(closed_port_url: str) -> None:
    """Other commands report the unreachable server instead of a traceback."""
    result = on(closed_port_url, "deployments", "list")
    assert result.exit_code == 1
    assert "cannot reach" in result.output


# --- deployments -------------------------------------------------------------------------------


def test_deployments_list_get_delete(live_server: str) -> None:
    """``deployments list|get|delete --yes`` over a deployed quick start."""
    # Given the quick start is deployed
    deploy_quickstart(live_server)
    # Then list prints its name
    listed = on(live_server, "deployments", "list")
    assert listed.exit_code == 0, listed.output
    assert column(listed.stdout, "NAME") == ["QuickStart"]

    # And get shows its services and their queues as JSON, with the live workers serving it
    # once their first heartbeat is recorded (it may still be on its way just after start)
    def get() -> dict[str, Any]:
        got = on(live_server, "deployments", "get", "QuickStart", "-o", "json")
        assert got.exit_code == 0, got.output
        described: dict[str, Any] = json.loads(got.stdout)
        return described

    described = poll(get, lambda d: bool(d["services"] and d["services"][0]["workers"]))
    assert described["name"] == "QuickStart"
    assert described["default_service"] == "echo_workflow"
    (service,) = described["services"]
    assert service["name"] == "echo_workflow"
    assert service["display_name"] == "Echo Workflow"
    assert service["queue"] == service_queue("QuickStart", "echo_workflow")
    # And the live workers serving it (the embedded ones), each with its last heartbeat
    assert all(worker["last_heartbeat"] for worker in service["workers"])
    # When it is deleted
    deleted = on(live_server, "deployments", "delete", "QuickStart", "--yes")
    # Then it is gone
    assert deleted.exit_code == 0, deleted.output
    assert "QuickStart" in deleted.stdout
    assert on(live_server, "deployments", "list").stdout.strip() == ""
    gone = on(live_server, "deployments", "get", "QuickStart")
    assert gone.exit_code != 0
    assert "not found" in gone.output.lower()


def test_delete_of_an_unknown_deployment_fails(live_server: str) -> None:
    """``deployments delete`` of a name that does not exist exits non-zero."""
    result = on(live_server, "deployments", "delete", "Nowhere", "--yes")
    assert result.exit_code != 0
    assert "not found" in result.output.lower()


def test_delete_without_yes_asks_and_can_be_declined(live_server: str) -> None:
    """Without ``--yes`` delete asks first; answering no keeps the deployment."""
    deploy_quickstart(live_server)
    result = CliRunner().invoke(
        cli, ["-s", live_server, "deployments", "delete", "QuickStart"], input="n\n"
    )
    assert result.exit_code != 0
    assert column(on(live_server, "deployments", "list").stdout, "NAME") == ["QuickStart"]


# --- sessions ----------------------------------------------------------------------------------


def test_sessions_create_list_get_delete(live_server: str) -> None:
    """``sessions create|list|get|delete`` over the quick start."""
    deploy_quickstart(live_server)
    # When a session is created
    created = on(live_server, "sessions", "create", "-d", "QuickStart")
    # Then it is printed as JSON
    assert created.exit_code == 0, created.output
    session = json.loads(created.stdout)
    session_id = session["session_id"]
    assert session_id
    assert session["task_ids"] == []
    # And list and get find it
    listed = on(live_server, "sessions", "list", "-d", "QuickStart")
    assert listed.exit_code == 0, listed.output
    assert session_id in listed.stdout.split()
    got = on(live_server, "sessions", "get", "-d", "QuickStart", session_id, "-o", "json")
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout)["session_id"] == session_id
    # When it is deleted
    deleted = on(live_server, "sessions", "delete", "-d", "QuickStart", session_id)
    # Then it is gone
    assert deleted.exit_code == 0, deleted.output
    assert session_id not in on(live_server, "sessions", "list", "-d", "QuickStart").stdout
    missing = on(live_server, "sessions", "get", "-d", "QuickStart", session_id)
    assert missing.exit_code != 0
    assert "not found" in missing.output.lower()


def test_sessions_create_on_an_unknown_deployment_fails(live_server: str) -> None:
    """``sessions create`` needs an existing deployment."""
    result = on(live_server, "sessions", "create", "-d", "Nowhere")
    assert result.exit_code != 0
    assert "not found" in result.output.lower()


# --- tasks -------------------------------------------------------------------------------------


def test_tasks_list_and_get(live_server: str) -> None:
    """``tasks list -d`` shows each run with its status; ``tasks get`` shows one as JSON."""
    # Given two tasks have run
    deploy_quickstart(live_server)
    for message in ("first", "second"):
        ran = on(live_server, "run", "-d", "QuickStart", "-a", "message", message)
        assert ran.exit_code == 0, ran.output
    # When the tasks are listed
    listed = on(live_server, "tasks", "list", "-d", "QuickStart")
    # Then both are there, succeeded, on the default service
    assert listed.exit_code == 0, listed.output
    listed_rows = rows(listed.stdout)
    assert len(listed_rows) == 2
    assert all(r["STATUS"] == "succeeded" and r["SERVICE"] == "echo_workflow" for r in listed_rows)
    # And get shows the first one's input and result
    first_id = listed_rows[0]["TASK"]
    got = on(live_server, "tasks", "get", "-d", "QuickStart", first_id, "-o", "json")
    assert got.exit_code == 0, got.output
    task = json.loads(got.stdout)
    assert task["task_id"] == first_id
    assert task["status"] == "succeeded"
    assert task["input"] == {"message": "first"}
    assert task["result"] == "Message received: first"
    # And its one run, succeeded
    [run] = task["attempt_history"]
    assert (task["attempts"], run["attempt"], run["outcome"]) == (1, 1, "succeeded")
    # And a task that does not exist is not found
    missing = on(live_server, "tasks", "get", "-d", "QuickStart", "no-such-task")
    assert missing.exit_code != 0
    assert "not found" in missing.output.lower()
    # And tasks attempts shows that run in a table, or as JSON
    table = on(live_server, "tasks", "attempts", "-d", "QuickStart", first_id)
    assert table.exit_code == 0, table.output
    header, row = table.stdout.splitlines()
    assert header.split() == ["#", "WORKER", "STARTED", "FINISHED", "OUTCOME", "ERROR"]
    assert row.split()[0] == "1" and row.split()[1] == run["worker"]
    assert row.split()[4] == "succeeded"
    as_json = on(live_server, "tasks", "attempts", "-d", "QuickStart", first_id, "--json")
    assert json.loads(as_json.stdout) == [run]
    gone = on(live_server, "tasks", "attempts", "-d", "QuickStart", "no-such-task")
    assert gone.exit_code != 0 and "not found" in gone.output.lower()


# --- server selection and profiles -------------------------------------------------------------


def test_celeriac_server_env_var_picks_the_server(
    live_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no ``-s``, ``CELERIAC_SERVER`` names the server."""
    deploy_quickstart(live_server)
    monkeypatch.setenv("CELERIAC_SERVER", live_server)
    result = celeriac("status")
    assert result.exit_code == 0, result.output
    assert live_server in result.stdout
    assert column(result.stdout, "DEPLOYMENT", block=1) == ["QuickStart"]


def test_profiles_lifecycle(isolated_profiles: Path) -> None:
    """set-profile, use-profile, current-profile, get-profiles and delete-profile."""
    # Given no profile file
    assert not isolated_profiles.exists()
    assert celeriac("config", "current-profile").stdout.strip() == "default"
    # When two profiles are set
    local = celeriac("config", "set-profile", "local", "--server", "http://127.0.0.1:1111")
    remote = celeriac(
        "config", "set-profile", "remote", "--server", "http://example.invalid", "--timeout", "5"
    )
    assert local.exit_code == 0, local.output
    assert remote.exit_code == 0, remote.output
    # Then they are written to $CELERIAC_CONFIG
    stored = yaml.safe_load(isolated_profiles.read_text())
    assert stored["profiles"]["local"] == {"server": "http://127.0.0.1:1111"}
    assert stored["profiles"]["remote"] == {"server": "http://example.invalid", "timeout": 5.0}
    # When one is made current
    used = celeriac("config", "use-profile", "remote")
    # Then current-profile names it and get-profiles marks it
    assert used.exit_code == 0, used.output
    assert celeriac("config", "current-profile").stdout.strip() == "remote"
    listing = rows(celeriac("config", "get-profiles").stdout)
    assert [(row["CURRENT"], row["NAME"]) for row in listing] == [("", "local"), ("*", "remote")]
    assert listing[1]["SERVER"] == "http://example.invalid"
    # When the current one is deleted
    deleted = celeriac("config", "delete-profile", "remote")
    # Then it is gone and the current profile falls back to the default
    assert deleted.exit_code == 0, deleted.output
    assert celeriac("config", "current-profile").stdout.strip() == "default"
    assert "remote" not in celeriac("config", "get-profiles").stdout
    assert "local" in celeriac("config", "get-profiles").stdout


def test_use_or_delete_of_an_unknown_profile_fails(isolated_profiles: Path) -> None:
    """``use-profile`` and ``delete-profile`` of a name that does not exist exit non-zero."""
    used = celeriac("config", "use-profile", "ghost")
    assert used.exit_code != 0
    assert "ghost" in used.output
    deleted = celeriac("config", "delete-profile", "ghost")
    assert deleted.exit_code != 0
    assert "ghost" in deleted.output
    assert celeriac("config", "current-profile").stdout.strip() == "default"


def test_a_profile_server_is_used_without_s_or_env(live_server: str) -> None:
    """The current profile's server is used when neither ``-s`` nor the env var is given."""
    # Given a current profile pointing at the live server
    deploy_quickstart(live_server)
    assert celeriac("config", "set-profile", "live", "--server", live_server).exit_code == 0
    assert celeriac("config", "use-profile", "live").exit_code == 0
    # When commands run without -s
    status = celeriac("status")
    ran = celeriac("run", "-d", "QuickStart", "-a", "message", "via profile")
    # Then they reach the profile's server
    assert status.exit_code == 0, status.output
    assert live_server in status.stdout
    assert ran.exit_code == 0, ran.output
    assert ran.stdout.strip() == "Message received: via profile"


def test_p_picks_a_profile_other_than_the_current_one(
    live_server: str, closed_port_url: str
) -> None:
    """``-p NAME`` takes the server from that profile, not the current one."""
    assert celeriac("config", "set-profile", "dead", "--server", closed_port_url).exit_code == 0
    assert celeriac("config", "set-profile", "live", "--server", live_server).exit_code == 0
    assert celeriac("config", "use-profile", "dead").exit_code == 0
    assert celeriac("status").exit_code != 0
    result = celeriac("-p", "live", "status")
    assert result.exit_code == 0, result.output
    assert "Healthy" in result.stdout


def test_s_beats_env_which_beats_the_profile(
    live_server: str, closed_port_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Precedence of the server: ``-s``, then ``CELERIAC_SERVER``, then the profile."""
    # Given a current profile pointing at a closed port
    assert celeriac("config", "set-profile", "dead", "--server", closed_port_url).exit_code == 0
    assert celeriac("config", "use-profile", "dead").exit_code == 0
    assert "Down" in celeriac("status").output
    # When CELERIAC_SERVER names the live server, it beats the profile
    monkeypatch.setenv("CELERIAC_SERVER", live_server)
    from_env = celeriac("status")
    assert from_env.exit_code == 0, from_env.output
    assert live_server in from_env.stdout
    # When CELERIAC_SERVER names the closed port and -s the live server, -s beats the env var
    monkeypatch.setenv("CELERIAC_SERVER", closed_port_url)
    assert celeriac("status").exit_code != 0
    from_flag = celeriac("-s", live_server, "status")
    assert from_flag.exit_code == 0, from_flag.output
    assert live_server in from_flag.stdout


def test_version_and_help() -> None:
    """``--version`` and ``-h`` work without a server."""
    version = celeriac("--version")
    assert version.exit_code == 0
    assert "celeriac" in version.output.lower()
    helped = celeriac("-h")
    assert helped.exit_code == 0
    for command in ("deploy", "run", "status", "deployments", "sessions", "tasks", "config"):
        assert command in helped.output


# --- commands on the server's database ---------------------------------------------------------


@pytest.mark.parametrize("command", [["db", "upgrade"], ["tokens", "list"], ["serve"]])
def test_a_database_out_of_reach_is_named_without_its_password_and_no_traceback(
    command: list[str], closed_port_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = closed_port_url.replace("http://", "postgresql+psycopg://bob:hunter2@") + "/db"
    monkeypatch.setenv("CELERIAC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CELERIAC_DATABASE_URL", closed)
    result = celeriac(*command)
    assert result.exit_code == 1
    shown = closed.replace("hunter2", "***")
    assert result.output.startswith(f"Error: could not use the database {shown}: "), result.output
    assert "Connection refused" in result.output
    assert "hunter2" not in result.output and "Traceback" not in result.output


def test_a_database_driver_not_installed_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELERIAC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CELERIAC_DATABASE_URL", "mysql+pymysql://bob:hunter2@127.0.0.1/db")
    result = celeriac("db", "upgrade")
    assert result.exit_code == 1
    assert result.output == (
        "Error: the database URL (mysql+pymysql) needs the driver pymysql, which is not installed\n"
    )
