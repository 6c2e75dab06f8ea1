"""``/deployments/``: create, reload, list, read and delete deployments through the HTTP API."""

from __future__ import annotations

import datetime as dt
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.app.conftest import (
    ENVIRON,
    ENVIRON_TOO,
    SLEEPY,
    STRUCTURED,
    TWIN_ONE,
    TWIN_TWO,
    assert_error,
    deployed,
    field_errors,
    ok,
    poll,
    post_yaml,
    wait_for_task,
    write_echo_deployment,
)
from tests.conftest import MULTISTEP, QUICKSTART, deploy

#: Every test here ends with all its tasks ended: a task never stays queued.
pytestmark = pytest.mark.usefixtures("no_task_left_behind")

QUICKSTART_DIR = QUICKSTART.parent


def run(client: FlaskClient, deployment: str, **body: Any) -> Any:
    """``tasks/run`` that must succeed; its result."""
    return ok(client.post(f"/deployments/{deployment}/tasks/run", json=body))


def names(client: FlaskClient) -> list[str]:
    """The names ``GET /deployments/`` lists."""
    return [d["name"] for d in ok(client.get("/deployments/"))]


# -- create ------------------------------------------------------------------------------------


def test_create_returns_the_deployment_with_its_services(client: FlaskClient) -> None:
    # When the quick start is deployed
    deployment = ok(deploy(client, QUICKSTART))
    # Then the answer describes it, with the Celery queue of its one service
    assert deployment["name"] == "QuickStart"
    assert deployment["default_service"] == "echo_workflow"
    assert deployment["version"] == 1
    assert deployment["services"] == [
        {
            "name": "echo_workflow",
            "display_name": "Echo Workflow",
            "queue": "celeriac.QuickStart.echo_workflow",
        }
    ]
    # And the server's folder shows only where workers read it (no caller sees internals yet)
    assert deployment["base_path"] is None
    assert Path(ok(client.get("/deployments/QuickStart/spec"))["base_path"]) == QUICKSTART_DIR
    created = dt.datetime.fromisoformat(deployment["created_at"])
    assert created.tzinfo is not None


def test_create_accepts_llamactl_query_arguments(client: FlaskClient) -> None:
    # When a deployment comes with LlamaDeploy's ``local`` flag, as ``llamactl serve`` sends it
    with QUICKSTART.open("rb") as fh:
        response = client.post(
            "/deployments/create",
            query_string={"base_path": str(QUICKSTART_DIR), "local": "true", "reload": "false"},
            data={"config_file": (fh, "deployment.yml")},
            content_type="multipart/form-data",
        )
    # Then it is deployed and runs
    assert ok(response)["name"] == "QuickStart"
    assert run(client, "QuickStart", input='{"message": "hi"}') == "Message received: hi"


def test_create_twice_without_reload_is_a_conflict(client: FlaskClient) -> None:
    # Given the quick start is deployed
    first = deployed(client, QUICKSTART)
    # When it is deployed again without reload
    body = assert_error(deploy(client, QUICKSTART), 409)
    # Then the answer says why, and the stored one is untouched
    assert "QuickStart" in body["message"]
    assert ok(client.get("/deployments/QuickStart")) == first


def test_reload_of_a_missing_deployment_is_not_found(client: FlaskClient) -> None:
    body = assert_error(deploy(client, QUICKSTART, reload=True), 404)
    assert "QuickStart" in body["message"]
    assert names(client) == []


def test_reload_replaces_the_code_and_bumps_the_version(
    client: FlaskClient, tmp_path: Path
) -> None:
    # Given version 1 of a deployment is deployed and answers in English
    v1 = write_echo_deployment(tmp_path / "v1", "Reloaded", "I have received:")
    v2 = write_echo_deployment(tmp_path / "v2", "Reloaded", "Ho ricevuto:")
    assert deployed(client, v1)["version"] == 1
    assert run(client, "Reloaded", input='{"data": "bar"}') == "I have received:bar"
    # When version 2 is deployed with reload
    reloaded = ok(deploy(client, v2, reload=True))
    # Then the deployment is replaced and its new code runs
    assert reloaded["version"] == 2
    spec = ok(client.get("/deployments/Reloaded/spec"))
    assert Path(spec["base_path"]) == (tmp_path / "v2").resolve()
    assert ok(client.get("/deployments/Reloaded"))["version"] == 2
    assert run(client, "Reloaded", input='{"data": "bar"}') == "Ho ricevuto:bar"
    assert names(client) == ["Reloaded"]


def test_reload_in_place_runs_the_edited_file(client: FlaskClient, tmp_path: Path) -> None:
    # Given a deployment whose workflow file is then edited where it is
    path = write_echo_deployment(tmp_path / "app", "InPlace", "I have received:")
    deployed(client, path)
    assert run(client, "InPlace", input='{"data": "bar"}') == "I have received:bar"
    write_echo_deployment(tmp_path / "v2", "InPlace", "Ho ricevuto:")
    (tmp_path / "app" / "src" / "workflow.py").write_text(
        (tmp_path / "v2" / "src" / "workflow.py").read_text()
    )
    # When it is reloaded from the same folder
    assert ok(deploy(client, path, reload=True))["version"] == 2
    # Then the edited code runs
    assert run(client, "InPlace", input='{"data": "bar"}') == "Ho ricevuto:bar"


def test_reload_can_change_the_services(client: FlaskClient, project: Path) -> None:
    # Given the quick start, then a reload whose service has another id
    deployed(client, project / "quickstart" / "deployment.yml")
    path = project / "quickstart" / "deployment.yml"
    path.write_text(
        path.read_text()
        .replace("echo_workflow:\n", "renamed:\n", 1)
        .replace("default-service: echo_workflow", "default-service: renamed")
    )
    # When it is reloaded
    reloaded = ok(deploy(client, path, reload=True))
    # Then the old service is gone and the new one runs
    assert [s["name"] for s in reloaded["services"]] == ["renamed"]
    assert reloaded["services"][0]["queue"] == "celeriac.QuickStart.renamed"
    assert run(client, "QuickStart", input={"message": "x"}) == "Message received: x"
    gone = assert_error(
        client.post(
            "/deployments/QuickStart/tasks/run",
            json={"input": "{}", "service_id": "echo_workflow"},
        ),
        404,
    )
    assert "echo_workflow" in gone["message"]


def test_deployment_limit_is_a_conflict(limited_client: FlaskClient) -> None:
    # Given a server that takes one deployment, which it has
    deployed(limited_client, QUICKSTART)
    # When another is deployed
    body = assert_error(deploy(limited_client, MULTISTEP), 409)
    # Then it is refused and not stored, but reloading the one it has still works
    assert "limit" in body["message"]
    assert names(limited_client) == ["QuickStart"]
    assert ok(deploy(limited_client, QUICKSTART, reload=True))["version"] == 2


# -- bad files ---------------------------------------------------------------------------------


def test_create_without_a_file_names_the_field(client: FlaskClient) -> None:
    response = client.post(
        "/deployments/create",
        query_string={"base_path": str(QUICKSTART_DIR)},
        data={},
        content_type="multipart/form-data",
    )
    body = assert_error(response, 422)
    assert "config_file" in field_errors(body)


def test_create_with_the_file_as_a_plain_form_value_names_the_field(client: FlaskClient) -> None:
    # The YAML sent as a text field instead of a file upload
    response = client.post(
        "/deployments/create",
        query_string={"base_path": str(QUICKSTART_DIR)},
        data={"config_file": QUICKSTART.read_text()},
        content_type="multipart/form-data",
    )
    body = assert_error(response, 422)
    assert "config_file" in field_errors(body)
    assert names(client) == []


def test_create_with_a_json_body_is_refused(client: FlaskClient) -> None:
    response = client.post("/deployments/create", json={"config_file": QUICKSTART.read_text()})
    assert_error(response, 422)
    assert names(client) == []


def test_create_with_a_non_utf8_file_is_refused(client: FlaskClient) -> None:
    body = assert_error(post_yaml(client, b"name: Caf\xe9\n", QUICKSTART_DIR), 422)
    assert "config_file" in field_errors(body)
    assert names(client) == []


VALID = """\
name: Broken
control-plane: {}
default-service: echo
services:
  echo:
    name: Echo
    source:
      type: local
      name: ./src
    path: workflow:echo_workflow
"""


INVALID_FILES = {
    # mistake: (file, the field the error must name)
    "missing name": (VALID.replace("name: Broken\n", ""), "name"),
    "unknown source type": (VALID.replace("type: local", "type: ftp"), "services.echo.source.type"),
    "docker source": (VALID.replace("type: local", "type: docker"), "services.echo.source.type"),
    "service without a source": (
        VALID.replace("    source:\n      type: local\n      name: ./src\n", ""),
        "services.echo.source",
    ),
    "module not in the source": (
        VALID.replace("workflow:echo_workflow", "nowhere/workflow:echo_workflow"),
        "services.echo.path",
    ),
    "env file not in the source": (
        VALID + "    env-files: [missing.env]\n",
        "services.echo.env-files",
    ),
    "YAML syntax": (VALID + "  oops: [unclosed\n", "yaml"),
    "not a mapping": ("- just\n- a list\n", "yaml"),
    "empty file": ("", "yaml"),
    "path not module:attr": (
        VALID.replace("workflow:echo_workflow", "workflow"),
        "services.echo.path",
    ),
    "absolute local source": (
        VALID.replace("name: ./src", "name: /etc"),
        "services.echo.source.name",
    ),
    "no services": (VALID.split("services:")[0] + "services: {}\n", "services"),
    "unknown top-level key": (VALID + "servics: {}\n", "servics"),
}


@pytest.mark.parametrize("mistake", INVALID_FILES)
def test_invalid_file_is_422_by_field_and_stores_nothing(client: FlaskClient, mistake: str) -> None:
    text, field = INVALID_FILES[mistake]
    # Given one deployment exists
    deployed(client, QUICKSTART)
    before = ok(client.get("/deployments/"))
    # When an invalid file is deployed
    body = assert_error(post_yaml(client, text, QUICKSTART_DIR), 422)
    # Then the error names the field, and nothing changed
    assert field in body["errors"], (mistake, body)
    assert all(isinstance(reason, str) for reason in body["errors"][field])
    assert ok(client.get("/deployments/")) == before
    assert_error(client.get("/deployments/Broken"), 404)


def test_invalid_reload_keeps_the_deployed_version(client: FlaskClient) -> None:
    # Given the quick start is deployed
    deployed(client, QUICKSTART)
    broken = QUICKSTART.read_text().replace("type: local", "type: docker")
    # When an invalid version of it is reloaded
    assert_error(post_yaml(client, broken, QUICKSTART_DIR, reload="true"), 422)
    # Then version 1 still serves
    assert ok(client.get("/deployments/QuickStart"))["version"] == 1
    assert run(client, "QuickStart", input={"message": "still"}) == "Message received: still"


def test_missing_local_source_folder_names_the_source(client: FlaskClient, tmp_path: Path) -> None:
    # Given a base path without the folder the service's source names
    text = VALID.replace("name: ./src", "name: ./nowhere")
    # When it is deployed
    body = assert_error(post_yaml(client, text, tmp_path), 422)
    # Then the error names the source of that service
    assert set(body["errors"]) == {"services.echo.source.name"}
    assert "nowhere" in body["errors"]["services.echo.source.name"][0]
    assert names(client) == []


def test_missing_workflow_module_names_the_path(client: FlaskClient, tmp_path: Path) -> None:
    # Given a source folder without the module the path names
    (tmp_path / "src").mkdir()
    text = VALID.replace("workflow:echo_workflow", "missing_module:echo_workflow")
    # When it is deployed
    body = assert_error(post_yaml(client, text, tmp_path), 422)
    # Then the error names the path of that service
    assert set(body["errors"]) == {"services.echo.path"}
    assert "missing_module" in body["errors"]["services.echo.path"][0]
    assert names(client) == []


def test_bad_reload_flag_is_refused(client: FlaskClient) -> None:
    body = assert_error(
        post_yaml(client, QUICKSTART.read_text(), QUICKSTART_DIR, reload="maybe"), 422
    )
    assert "reload" in field_errors(body)
    assert names(client) == []


# -- read --------------------------------------------------------------------------------------


def test_list_shows_every_deployment(client: FlaskClient) -> None:
    assert ok(client.get("/deployments/")) == []
    created = [deployed(client, path) for path in (STRUCTURED, QUICKSTART)]
    listed = ok(client.get("/deployments/"))
    assert sorted(d["name"] for d in listed) == ["QuickStart", "Structured"]
    assert {d["name"]: d for d in listed} == {d["name"]: d for d in created}


def test_get_returns_what_create_returned(client: FlaskClient) -> None:
    created = deployed(client, QUICKSTART)
    assert ok(client.get("/deployments/QuickStart")) == created


def test_get_unknown_deployment_is_not_found(client: FlaskClient) -> None:
    body = assert_error(client.get("/deployments/Nope"), 404)
    assert "Nope" in body["message"]


# -- delete ------------------------------------------------------------------------------------


def test_delete_removes_the_deployment_and_its_tasks(client: FlaskClient) -> None:
    # Given a deployment with a finished task
    deployed(client, QUICKSTART)
    task = ok(client.post("/deployments/QuickStart/tasks/create", json={"input": "{}"}))
    wait_for_task(client, "QuickStart", task["task_id"])
    # When it is deleted
    response = client.delete("/deployments/QuickStart")
    # Then it is gone, and so are its tasks (even once the same name is deployed again)
    assert response.status_code == 204
    assert response.get_data() == b""
    assert_error(client.get("/deployments/QuickStart"), 404)
    assert_error(client.get("/deployments/QuickStart/tasks"), 404)
    assert names(client) == []
    deployed(client, QUICKSTART)
    assert ok(client.get("/deployments/QuickStart/tasks")) == []
    assert_error(client.get(f"/deployments/QuickStart/tasks/{task['task_id']}"), 404)


def test_delete_twice_is_not_found(client: FlaskClient) -> None:
    deployed(client, QUICKSTART)
    assert client.delete("/deployments/QuickStart").status_code == 204
    assert_error(client.delete("/deployments/QuickStart"), 404)


def test_delete_unknown_deployment_is_not_found(client: FlaskClient) -> None:
    body = assert_error(client.delete("/deployments/Nope"), 404)
    assert "Nope" in body["message"]


def test_delete_with_a_task_running_then_deploy_again(client: FlaskClient) -> None:
    # Given a task that is running
    deployed(client, SLEEPY)
    # (long enough to be seen running on a busy machine: a start is reported after 0.25 s)
    task = ok(client.post("/deployments/Sleepy/tasks/create", json={"input": {"seconds": 1.0}}))
    url = f"/deployments/Sleepy/tasks/{task['task_id']}"
    poll(lambda: ok(client.get(url))["status"], lambda status: status == "running")
    # When its deployment is deleted
    assert client.delete("/deployments/Sleepy").status_code == 204
    # Then its task is gone, and a new deployment of the same name serves new tasks (this run
    # outlasts the deleted one, which the server only ever finishes in the background)
    assert_error(client.get(url), 404)
    deployed(client, SLEEPY)
    assert run(client, "Sleepy", input={"seconds": 1.2}) == "slept 1.2s"
    assert [t["result"] for t in ok(client.get("/deployments/Sleepy/tasks"))] == ["slept 1.2s"]


SHUTDOWN_SCRIPT = """
import sys, time
from pathlib import Path
from app.server import Server
from config.settings import Settings

data_dir, deployment_file = Path(sys.argv[1]), Path(sys.argv[2])
server = Server(Settings(data_dir=data_dir, port=0, polling_interval=0.001, worker_concurrency=2))
server.start_workers()
client = server.app.test_client()
with deployment_file.open("rb") as fh:
    response = client.post(
        "/deployments/create",
        query_string={"base_path": str(deployment_file.parent)},
        data={"config_file": (fh, "deployment.yml")},
        content_type="multipart/form-data",
    )
assert response.status_code == 200, response.get_data(as_text=True)
task = client.post("/deployments/Sleepy/tasks/create", json={"input": {"seconds": 0.5}})
url = "/deployments/Sleepy/tasks/" + task.get_json()["task_id"]
deadline = time.monotonic() + 10
while client.get(url).get_json()["status"] != "running":
    assert time.monotonic() < deadline, "the task never started"
    time.sleep(0.01)
assert client.delete("/deployments/Sleepy").status_code == 204
server.close()
print("closed", flush=True)
"""


def test_server_exits_after_deleting_a_deployment_with_a_task_running(tmp_path: Path) -> None:
    # Given a server whose deployment was deleted while one of its tasks ran, then closed
    # (in a child process: what is checked is that this process can end at all)
    try:
        child = subprocess.run(
            [sys.executable, "-c", SHUTDOWN_SCRIPT, str(tmp_path / "data"), str(SLEEPY)],
            capture_output=True,
            text=True,
            timeout=20,
            cwd=tmp_path,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the server process did not exit within 20 s after close(): {exc.stdout!r}")
    # Then the process ends cleanly
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "closed"


# -- isolation between deployments and services --------------------------------------------------


def test_same_module_name_in_two_deployments_does_not_clash(client: FlaskClient) -> None:
    # Given two deployments whose workflows are both ``workflow:twin_workflow``
    deployed(client, TWIN_ONE)
    deployed(client, TWIN_TWO)
    # When each runs, in turn and then concurrently
    assert run(client, "TwinOne", input={"message": "a"}) == "twin one: a"
    assert run(client, "TwinTwo", input={"message": "b"}) == "twin two: b"
    submitted = [
        (
            name,
            i,
            ok(client.post(f"/deployments/{name}/tasks/create", json={"input": {"message": i}})),
        )
        for i in range(4)
        for name in ("TwinOne", "TwinTwo")
    ]
    # Then each answers with its own code
    for name, i, task in submitted:
        who = "one" if name == "TwinOne" else "two"
        assert wait_for_task(client, name, task["task_id"])["result"] == f"twin {who}: {i}"


def test_each_service_sees_its_own_environment(client: FlaskClient) -> None:
    # Given services of one deployment and of another that set the same variable differently
    deployed(client, ENVIRON)
    deployed(client, ENVIRON_TOO)
    expected = {
        ("Environ", "red"): "red/-",
        ("Environ", "blue"): "blue/-",
        ("Environ", "filed"): "from-file/square",
        ("Environ", "plain"): "-/-",
        ("EnvironToo", "green"): "green/-",
    }
    # When they all run, several times each, at the same time
    submitted = [
        (
            key,
            ok(
                client.post(
                    f"/deployments/{key[0]}/tasks/create",
                    json={"input": "{}", "service_id": key[1]},
                )
            ),
        )
        for _ in range(3)
        for key in expected
    ]
    # Then each saw its own value (an env-file value wins over inline env), and the API
    # server's own environment was left alone
    for key, task in submitted:
        done = wait_for_task(client, key[0], task["task_id"])
        assert (key, done["result"]) == (key, expected[key])
    assert "CELERIAC_TEST_COLOUR" not in os.environ
    assert "CELERIAC_TEST_SHAPE" not in os.environ


def test_default_service_naming_no_service_deploys_with_a_warning(client: FlaskClient) -> None:
    # Given a file whose default-service names no service (LlamaDeploy's own e2e files do this)
    text = VALID.replace("default-service: echo", "default-service: nobody")
    # When it is deployed
    deployment = ok(post_yaml(client, text, QUICKSTART_DIR))
    # Then it is stored, and the answer (and every later read) says what is wrong
    [warning] = deployment["warnings"]
    assert "default-service 'nobody' is not a service of this deployment" in warning
    assert ok(client.get("/deployments/Broken"))["warnings"] == [warning]
    # And a task that names no service is refused as LlamaDeploy refused it, creating nothing
    for route in ("run", "create"):
        response = client.post(f"/deployments/Broken/tasks/{route}", json={"input": "{}"})
        body = assert_error(response, 400)
        assert "has no default-service (its default-service 'nobody'" in body["message"]
    assert ok(client.get("/deployments/Broken/tasks")) == []
    # While a task that names its service runs
    body = {"input": '{"message": "hi"}', "service_id": "echo"}
    assert run(client, "Broken", **body) == "Message received: hi"


def test_module_not_found_names_every_place_tried(client: FlaskClient, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    text = VALID.replace("name: ./src", "name: src").replace("path: workflow", "path: src/flow")
    body = assert_error(post_yaml(client, text, tmp_path), 422)
    assert body["errors"]["services.echo.path"] == [
        "module 'flow' not found under the base path; looked in src, src/src"
    ]


def test_upload_filename_does_not_matter(client: FlaskClient) -> None:
    response = client.post(
        "/deployments/create",
        query_string={"base_path": str(QUICKSTART_DIR)},
        data={"config_file": (io.BytesIO(QUICKSTART.read_bytes()), "anything.txt")},
        content_type="multipart/form-data",
    )
    assert ok(response)["name"] == "QuickStart"
