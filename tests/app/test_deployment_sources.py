"""Deployment sources stay where the operator allows (issue 14, item 3): checked by the
control plane when a deployment is created or reloaded (422 on the source's field, nothing
stored), and again by the worker that loads it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from kombu.transport import memory

from app.server import Server
from config.settings import Settings
from tests.app.conftest import (
    assert_error,
    field_errors,
    ok,
    post_yaml,
    wait_for_task,
    write_echo_deployment,
)

NOT_ALLOWED = (
    "the folder lies outside the folders this server takes sources from (CELERIAC_SOURCE_ROOTS)"
)


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    """The one folder the operator allows sources in."""
    folder = tmp_path / "allowed"
    folder.mkdir()
    return folder


def serve(settings: Settings) -> Iterator[FlaskClient]:
    srv = Server(settings)
    srv.start_workers()
    try:
        yield srv.app.test_client()
    finally:
        srv.close()
        memory.Channel.queues.clear()


@pytest.fixture
def confined(settings: Settings, allowed: Path) -> Iterator[FlaskClient]:
    """A server whose operator set CELERIAC_SOURCE_ROOTS to ``allowed``."""
    yield from serve(settings.replace(source_roots=str(allowed)))


@pytest.fixture
def exposed(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A server bound to every interface (with no tokens, as its operator allowed), without
    roots set: it was started in ``started``."""
    started = tmp_path / "started"
    started.mkdir()
    monkeypatch.chdir(started)
    yield from serve(settings.replace(host="0.0.0.0", insecure_no_auth=True))


def deployments(client: FlaskClient) -> list[str]:
    return [d["name"] for d in ok(client.get("/deployments/"))]


def refused(client: FlaskClient, yaml: str, base: Path) -> dict[str, Any]:
    """Deploy ``yaml`` from ``base``: it must be refused with 422 and store nothing."""
    before = deployments(client)
    body = assert_error(post_yaml(client, yaml, base), 422)
    assert body["message"] == "the deployment's sources are missing or not allowed"
    assert deployments(client) == before
    return field_errors(body)


def test_a_deployment_inside_the_roots_runs(confined: FlaskClient, allowed: Path) -> None:
    path = write_echo_deployment(allowed / "app", "Inside", "echo:")
    ok(post_yaml(confined, path.read_text(), path.parent))
    done = ok(confined.post("/deployments/Inside/tasks/run", json={"input": '{"data": "x"}'}))
    assert done == "echo:x"


def test_a_base_path_outside_the_roots_is_refused(confined: FlaskClient, tmp_path: Path) -> None:
    # Given a deployment folder elsewhere on the server, such as the attacker's pick
    path = write_echo_deployment(tmp_path / "elsewhere", "Outside", "echo:")
    # When it is deployed with base_path pointing at it, then it is refused on its source
    errors = refused(confined, path.read_text(), path.parent)
    assert errors == {
        "services.echo.source.name": [
            f"folder './src' under the base path …/elsewhere: {NOT_ALLOWED}"
        ]
    }


def test_dot_dot_out_of_the_roots_is_refused(
    confined: FlaskClient, allowed: Path, tmp_path: Path
) -> None:
    # Given a base path inside the roots, and a source name that climbs out of them
    write_echo_deployment(tmp_path / "secret", "Climb", "echo:")
    yaml = (tmp_path / "secret" / "deployment.yml").read_text()
    yaml = yaml.replace("name: ./src", "name: ../secret/src")
    errors = refused(confined, yaml, allowed)
    assert errors["services.echo.source.name"] == [
        f"folder '../secret/src' under the base path …/allowed: {NOT_ALLOWED}"
    ]
    # And so is the root of the file system, the issue's own example
    yaml = yaml.replace("name: ../secret/src", "name: ../../../../../../..")
    assert "services.echo.source.name" in refused(confined, yaml, Path("/"))


def test_a_symbolic_link_out_of_the_roots_is_refused(
    confined: FlaskClient, allowed: Path, tmp_path: Path
) -> None:
    # Given a deployment inside the roots whose source folder is a link to a folder outside
    outside = write_echo_deployment(tmp_path / "outside", "Linked", "echo:")
    (allowed / "app").mkdir()
    (allowed / "app" / "src").symlink_to(outside.parent / "src")
    errors = refused(confined, outside.read_text(), allowed / "app")
    assert errors["services.echo.source.name"][0].endswith(NOT_ALLOWED)


def test_a_reload_is_checked_too(confined: FlaskClient, allowed: Path, tmp_path: Path) -> None:
    inside = write_echo_deployment(allowed / "app", "Moving", "v1:")
    ok(post_yaml(confined, inside.read_text(), inside.parent))
    outside = write_echo_deployment(tmp_path / "other", "Moving", "v2:")
    body = assert_error(
        post_yaml(confined, outside.read_text(), outside.parent, reload="true"), 422
    )
    assert "services.echo.source.name" in field_errors(body)
    # And the stored deployment is the first one, still running its code
    assert ok(confined.get("/deployments/Moving"))["version"] == 1
    assert ok(confined.post("/deployments/Moving/tasks/run", json={})) == "v1:"


def test_without_roots_a_server_on_every_interface_takes_its_two_folders(
    exposed: FlaskClient, settings: Settings, tmp_path: Path
) -> None:
    # A deployment in the folder the server was started in is taken
    started = write_echo_deployment(tmp_path / "started" / "app", "Started", "ok:")
    ok(post_yaml(exposed, started.read_text(), started.parent))
    # And one in the data folder
    data = write_echo_deployment(settings.data_dir / "apps" / "one", "Data", "ok:")
    ok(post_yaml(exposed, data.read_text(), data.parent))
    # But not one anywhere else
    other = write_echo_deployment(tmp_path / "other", "Other", "no:")
    errors = refused(exposed, other.read_text(), other.parent)
    assert errors["services.echo.source.name"][0].endswith(NOT_ALLOWED)


def test_on_loopback_without_tokens_any_folder_is_taken(
    client: FlaskClient, tmp_path: Path
) -> None:
    # The ``client`` server listens on 127.0.0.1 and has no token: its caller is its user
    path = write_echo_deployment(tmp_path / "anywhere", "Anywhere", "ok:")
    ok(post_yaml(client, path.read_text(), path.parent))


@pytest.mark.parametrize(
    ("path", "env_file"),
    [
        ("../workflow:echo_workflow", None),
        ("/etc/workflow:echo_workflow", None),
        ("src/workflow:echo_workflow", "../../secret.env"),
        ("src/workflow:echo_workflow", "/etc/passwd"),
        ("src/workflow:echo_workflow", "src/linked.env"),
    ],
    ids=["path-dot-dot", "path-absolute", "env-dot-dot", "env-absolute", "env-symlink"],
)
def test_path_and_env_files_never_leave_the_deployments_folder(
    client: FlaskClient, tmp_path: Path, path: str, env_file: str | None
) -> None:
    # Given a deployment (even on an open server) whose path or env file points outside
    (tmp_path / "secret.env").write_text("TOKEN=stolen\n")
    folder = tmp_path / "a" / "b"
    write_echo_deployment(folder, "Escape", "")
    (folder / "src" / "linked.env").symlink_to(tmp_path / "secret.env")
    yaml = (folder / "deployment.yml").read_text().replace("name: ./src", "name: src")
    yaml = yaml.replace("path: workflow:echo_workflow", f"path: {path}")
    if env_file is not None:
        yaml = yaml.replace("    path:", f"    env-files: [{json.dumps(env_file)}]\n    path:")
    # When it is deployed, then it is refused on that field, and nothing is stored
    body = assert_error(post_yaml(client, yaml, folder), 422)
    field = "services.echo.env-files" if env_file else "services.echo.path"
    assert field in field_errors(body), body
    assert "stolen" not in json.dumps(body)
    assert deployments(client) == []


GIT_YAML = """\
name: FromGit
control-plane: {{}}
services:
  echo:
    name: Echo
    source:
      type: git
      name: {location}
    path: workflow:echo_workflow
"""


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("git@example.org:o/r.git", "git URLs of scheme 'ssh' are not allowed here"),
        ("'ext::sh -c touch% /tmp/celeriac-pwned'", "expected a clone URL"),
        ("file:///srv/repo", "git URLs of scheme 'file' are not allowed here"),
        ("/srv/repo", "git URLs of scheme 'file' are not allowed here"),
        ("--upload-pack=id", "a URL cannot start with '-'"),
        ("https://example.org/r.git@--orphan", "a branch cannot start with '-'"),
    ],
)
def test_git_sources_of_other_schemes_or_option_like_values_are_refused(
    client: FlaskClient, tmp_path: Path, location: str, reason: str
) -> None:
    body = assert_error(post_yaml(client, GIT_YAML.format(location=location), tmp_path), 422)
    [message] = field_errors(body)["services.echo.source.name"]
    assert reason in message
    assert deployments(client) == []


def test_ext_transport_is_refused_by_scheme(settings: Settings, tmp_path: Path) -> None:
    # Even where the operator allowed other schemes, ext:: (git runs a command) is not one
    for client in serve(settings.replace(git_schemes="https,ssh,file")):
        yaml = GIT_YAML.format(location="ext::sh%-c%id")
        errors = field_errors(assert_error(post_yaml(client, yaml, tmp_path), 422))
        assert (
            "git URLs of scheme 'ext' are not allowed here"
            in errors["services.echo.source.name"][0]
        )


@pytest.mark.parametrize(
    "location",
    ["ssh://alice:s3cret@example.org/r.git", "https://alice:s3cret@example.org/r.git@-x"],
)
def test_refusals_never_echo_a_urls_credentials(
    client: FlaskClient, tmp_path: Path, location: str, caplog: pytest.LogCaptureFixture
) -> None:
    response = post_yaml(client, GIT_YAML.format(location=location), tmp_path)
    assert_error(response, 422)
    assert "s3cret" not in response.get_data(as_text=True)
    assert "***@example.org" in response.get_data(as_text=True)
    assert "s3cret" not in caplog.text


def test_a_specs_url_credentials_and_base_path_are_for_workers_and_admins_only(
    server: Server, client: FlaskClient, tmp_path: Path
) -> None:
    # Given a deployment from a git URL with credentials, on a server that then gets tokens
    location = "https://alice:s3cret@example.org/r.git"
    ok(post_yaml(client, GIT_YAML.format(location=location), tmp_path))
    scopes = ("admin", "run", "read", "worker")
    tokens = {scope: server.plane.tokens.create(scope, None).token for scope in scopes}

    def spec_as(scope: str) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {tokens[scope]}"}
        spec: dict[str, Any] = ok(client.get("/deployments/FromGit/spec", headers=headers))
        return spec

    # When each scope reads its spec, then only a worker token sees the URL's credentials
    shown = {scope: spec_as(scope) for scope in scopes}
    for scope, spec in shown.items():
        source = spec["spec"]["services"]["echo"]["source"]
        expected = location if scope == "worker" else "https://***@example.org/r.git"
        assert source["name"] == expected, scope
        if scope != "worker":
            assert "s3cret" not in json.dumps(spec), scope
    # And only a worker or an admin token the server's folder the deployment came from
    assert {scope: spec["base_path"] for scope, spec in shown.items()} == {
        "admin": str(tmp_path.resolve()),
        "run": None,
        "read": None,
        "worker": str(tmp_path.resolve()),
    }


def test_the_worker_refuses_a_stored_deployment_outside_its_roots(
    settings: Settings, tmp_path: Path
) -> None:
    # Given a deployment stored while the server was open (loopback, no roots)
    path = write_echo_deployment(tmp_path / "elsewhere", "Stored", "echo:")
    for client in serve(settings):
        ok(post_yaml(client, path.read_text(), path.parent))
    # When the server is started again with roots that leave it out, and a task is sent
    for client in serve(settings.replace(source_roots=str(tmp_path / "allowed"))):
        body = assert_error(client.post("/deployments/Stored/tasks/run", json={}), 502)
        task = wait_for_task(client, "Stored", body["errors"]["task_id"])
    # Then its worker refuses to load the code, and says why
    assert task["status"] == "failed"
    assert task["error"]["type"] == "workers.errors.WorkflowLoadError"
    assert task["error"]["message"] == (
        "service 'echo': local source './src' under …/elsewhere is refused by this worker: "
        f"{NOT_ALLOWED}"
    )
