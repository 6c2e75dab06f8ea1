"""Tests of what service workers read and the live registry: ``/spec``, ``/services``, and the
refusal of deployments that name another platform, on the embedded server."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask.testing import FlaskClient

from config.deployment import load_deployment_file, load_deployment_mapping
from config.settings import Settings
from tests.app.conftest import (
    assert_error,
    deployed,
    field_errors,
    ok,
    poll,
    post_yaml,
)
from tests.conftest import MULTISTEP, QUICKSTART, deploy

QUICKSTART_DIR = QUICKSTART.parent

#: Two services running the quick start's workflow, to see one queue per service.
PAIR_YAML = """\
name: Pair

control-plane: {}

default-service: left

services:
  left:
    name: Left
    source:
      type: local
      name: ./src
    path: workflow:echo_workflow
  right:
    name: Right
    source:
      type: local
      name: ./src
    path: workflow:echo_workflow
"""


#: Seconds between heartbeats of the in-process workers here, so that tests see several.
HEARTBEAT = 0.3


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The embedded settings of tests/conftest.py, with quick heartbeats."""
    return settings.replace(heartbeat_interval=HEARTBEAT)


def services(client: FlaskClient, deployment: str) -> dict[str, dict[str, Any]]:
    """``GET /deployments/{d}/services`` by service id."""
    return {s["name"]: s for s in ok(client.get(f"/deployments/{deployment}/services"))}


def worker_names(service: dict[str, Any]) -> set[str]:
    """Names of a service's live workers."""
    return {w["name"] for w in service["workers"]}


def with_extra(extra: str, name: str = "Elsewhere") -> str:
    """The quick start's YAML, renamed, with ``extra`` top-level fields."""
    return QUICKSTART.read_text().replace("name: QuickStart", f"name: {name}", 1) + extra


# --- /spec ---------------------------------------------------------------------------------------


def test_spec_returns_the_parsed_deployment_for_workers(client: FlaskClient) -> None:
    """``GET /spec`` gives name, version, base path and the whole parsed file."""
    # Given the quick start is deployed
    deployed(client, QUICKSTART)
    # When a worker reads its spec
    body = ok(client.get("/deployments/QuickStart/spec"))
    # Then it has the name, first version, absolute base path and the file's content
    assert set(body) == {"name", "version", "base_path", "spec", "env_redacted", "kept_versions"}
    assert body["kept_versions"] == []  # no earlier version kept for a durable task
    assert body["env_redacted"] is False  # an open server shows env values
    assert body["name"] == "QuickStart"
    assert body["version"] == 1
    assert body["base_path"] == str(QUICKSTART_DIR.resolve())
    assert load_deployment_mapping(body["spec"]) == load_deployment_file(QUICKSTART)
    assert body["spec"]["services"]["echo_workflow"]["path"] == "workflow:echo_workflow"


def test_spec_follows_reloads_and_unknown_deployments_are_404(client: FlaskClient) -> None:
    """A reload bumps the version workers see; an unknown name is a 404."""
    deployed(client, QUICKSTART)
    ok(deploy(client, QUICKSTART, reload=True))
    assert ok(client.get("/deployments/QuickStart/spec"))["version"] == 2
    body = assert_error(client.get("/deployments/Nope/spec"), 404)
    assert "Nope" in body["message"]


# --- /services -----------------------------------------------------------------------------------


def test_services_list_each_queue_with_the_in_process_workers(client: FlaskClient) -> None:
    """Each service is listed with its queue and the embedded worker that beats for it."""
    # Given a deployment of two services
    ok(post_yaml(client, PAIR_YAML, QUICKSTART_DIR))
    # When the registry is read once the in-process worker's first heartbeat is recorded
    listed = poll(
        lambda: services(client, "Pair"),
        lambda found: all(s["workers"] for s in found.values()),
    )
    # Then each service has its own queue and the deployment's worker, with its heartbeat,
    # still after further heartbeats
    time.sleep(2 * HEARTBEAT)
    listed = services(client, "Pair")
    assert set(listed) == {"left", "right"}
    assert listed["left"]["queue"] == "celeriac.Pair.left"
    assert listed["right"]["queue"] == "celeriac.Pair.right"
    assert listed["left"]["display_name"] == "Left"
    for service in listed.values():
        assert worker_names(service) == {"deployment-Pair@embedded"}, service
        (worker,) = service["workers"]
        assert set(worker) == {"name", "host", "pid", "started_at", "last_heartbeat"}
        assert worker["last_heartbeat"] and worker["started_at"]
        assert isinstance(worker["pid"], int) and worker["host"]


def test_each_deployment_lists_only_its_own_worker(client: FlaskClient) -> None:
    """Two deployments: each service lists its deployment's worker, never the control plane's."""
    # Given two deployments served in this process
    deployed(client, QUICKSTART)
    deployed(client, MULTISTEP)
    expected = {
        ("QuickStart", "echo_workflow"): {"deployment-QuickStart@embedded"},
        ("MultiStep", "streaming_workflow"): {"deployment-MultiStep@embedded"},
    }

    # When the registry has heard from their workers
    def registry() -> dict[tuple[str, str], set[str]]:
        found = {}
        for deployment in ("QuickStart", "MultiStep"):
            for sid, service in services(client, deployment).items():
                found[(deployment, sid)] = worker_names(service)
        return found

    poll(registry, lambda found: all(found.values()))
    # Then, beat after beat, each service is served by its own deployment's worker only
    for _ in range(3):
        time.sleep(2 * HEARTBEAT)
        assert registry() == expected


def test_services_of_an_unknown_deployment_is_404(client: FlaskClient) -> None:
    """The registry of a deployment that does not exist is a 404 naming it."""
    body = assert_error(client.get("/deployments/Ghost/services"), 404)
    assert "Ghost" in body["message"]


# --- deployments that name another platform ------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        (
            "\nmessage-queue:\n  type: redis\n  url: redis://:hunter2@127.0.0.1:6379/0\n",
            "message-queue",
            ["redis://:***@127.0.0.1:6379/0", "leave message-queue out"],
        ),
        ("\nmessage-queue:\n  type: kafka\n", "message-queue.type", ["kafka", "rabbitmq"]),
        ("\nmessage-queue:\n  type: solace\n", "message-queue.type", ["solace"]),
    ],
)
def test_a_message_queue_the_embedded_server_does_not_run_is_refused(
    client: FlaskClient, extra: str, field: str, words: list[str]
) -> None:
    """The embedded server runs on its in-process broker: a named broker is a 422 at its field."""
    response = post_yaml(client, with_extra(extra), QUICKSTART_DIR)
    errors = field_errors(assert_error(response, 422))
    assert list(errors) == [field], errors
    reason = " ".join(errors[field])
    for word in words:
        assert word in reason
    assert "hunter2" not in response.get_data(as_text=True)
    # And nothing was stored
    assert ok(client.get("/deployments/")) == []


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("mongodb+srv://user:pw@cluster0.example.net/state", ["mongodb+srv://", "SQL"]),
        ("redis://localhost:6379", ["redis://", "SQL"]),
        ("postgresql://me:pw@db.example/celeriac", ["postgresql://me:***@db.example/celeriac"]),
    ],
)
def test_a_state_store_the_server_does_not_use_is_refused(
    client: FlaskClient, uri: str, words: list[str]
) -> None:
    """A key-value store or another database is a 422 at control-plane.state_store_uri."""
    content = with_extra("").replace(
        "control-plane:\n  port: 8000\n",
        f"control-plane:\n  port: 8000\n  state_store_uri: {uri}\n",
    )
    assert uri in content
    errors = field_errors(assert_error(post_yaml(client, content, QUICKSTART_DIR), 422))
    assert list(errors) == ["control-plane.state_store_uri"], errors
    reason = " ".join(errors["control-plane.state_store_uri"])
    for word in words:
        assert word in reason
    assert ok(client.get("/deployments/")) == []


def test_a_simple_message_queue_is_accepted(client: FlaskClient) -> None:
    """LlamaDeploy's simple queue means "the platform's broker": accepted as it is."""
    content = with_extra("\nmessage-queue:\n  type: simple\n  host: 127.0.0.1\n  port: 8001\n")
    body = ok(post_yaml(client, content, QUICKSTART_DIR))
    assert body["name"] == "Elsewhere"
