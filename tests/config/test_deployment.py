"""Tests of the deployment spec: LlamaDeploy's YAML in, frozen dataclasses or field errors out."""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import json
import pickle
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

import config
from config.deployment import (
    SourceSpec,
    SourceType,
    load_deployment,
    load_deployment_file,
    load_deployment_mapping,
)
from config.errors import ConfigError, DeploymentSpecError

EXAMPLES = Path(config.__file__).parent / "deployments"

MINIMAL: dict[str, Any] = {
    "name": "Minimal",
    "control-plane": {},
    "services": {
        "echo": {
            "name": "Echo",
            "source": {"type": "local", "name": "src"},
            "path": "workflow:echo_workflow",
        }
    },
}

# A "kitchen sink" in the spirit of LlamaDeploy's tests/apiserver/data/example.yaml, minus the
# docker service that Celeriac refuses.
KITCHEN_SINK = """
name: MyDeployment

control-plane:
  port: 8000
  state_store_uri: redis://localhost:6379
  cors_origins: ["*"]

message-queue:
  type: redis
  host: redis
  port: 6379

default-service: myworkflow

services:
  myworkflow:
    # A python workflow available in a git repo, on a branch
    name: My Python Workflow
    source:
      type: git
      name: https://github.com/myorg/myrepo.git@dev
    path: src/python/app:workflow
    port: 1313
    python-dependencies:
      - "llama-index-core<1"
      - "requirements.txt"
    env:
      VAR_1: x
      VAR_2: 2
    env-files:
      - .env

  another-workflow:
    name: My LITS Workflow
    source:
      type: git
      name: git@github.com:myorg/myrepo.git
    path: src/ts/app:workflow
    host: localhost
    port: 1314
    ts-dependencies:
      "@llamaindex/core": "^0.2.0"
      "@notionhq/client": "^2.2.15"
"""


def _minimal(**changes: Any) -> dict[str, Any]:
    """A valid deployment mapping with top-level keys replaced (None removes a key)."""
    document = copy.deepcopy(MINIMAL)
    for key, value in changes.items():
        key = key.replace("_", "-")
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    return document


def _with_service(**fields: Any) -> dict[str, Any]:
    """A valid deployment whose ``echo`` service has fields replaced (None removes a field)."""
    document = _minimal()
    service = document["services"]["echo"]
    for key, value in fields.items():
        key = key.replace("_", "-")
        if value is None:
            service.pop(key, None)
        else:
            service[key] = value
    return document


def _errors(document: Any) -> dict[str, list[str]]:
    """Load a mapping or YAML text that must fail, and return its flat field errors."""
    with pytest.raises(DeploymentSpecError) as caught:
        if isinstance(document, str | bytes):
            load_deployment(document)
        else:
            load_deployment_mapping(document)
    return caught.value.errors


def _reason(errors: dict[str, list[str]], field: str) -> str:
    assert field in errors, f"expected an error at {field!r}, got {errors}"
    return " ".join(errors[field])


# --- one test per kind of mistake -------------------------------------------------------------


def test_missing_name() -> None:
    errors = _errors(_minimal(name=None))

    assert errors == {"name": ["Missing data for required field."]}


def test_name_with_characters_unsafe_in_urls_and_folders() -> None:
    errors = _errors(_minimal(name="my deployment/v2"))

    assert "letters, digits, '-', '_' and '.'" in _reason(errors, "name")


def test_missing_control_plane() -> None:
    errors = _errors(_minimal(control_plane=None))

    assert "Missing data" in _reason(errors, "control-plane")


def test_missing_services() -> None:
    errors = _errors(_minimal(services=None))

    assert "Missing data" in _reason(errors, "services")


def test_empty_services() -> None:
    errors = _errors(_minimal(services={}))

    assert "at least one service" in _reason(errors, "services")


def test_unknown_top_level_key() -> None:
    # Given a typo of "default-service"
    document = _minimal(default_servce="echo")

    errors = _errors(document)

    assert errors == {"default-servce": ["Unknown field."]}


def test_unknown_service_key() -> None:
    errors = _errors(_with_service(python_dependency=["x"]))

    assert errors == {"services.echo.python-dependency": ["Unknown field."]}


def test_missing_source_type() -> None:
    errors = _errors(_with_service(source={"name": "src"}))

    assert "Missing data" in _reason(errors, "services.echo.source.type")


def test_unknown_source_type() -> None:
    errors = _errors(_with_service(source={"type": "s3", "name": "bucket"}))

    assert "local, git" in _reason(errors, "services.echo.source.type")


def test_docker_source_is_refused() -> None:
    errors = _errors(_with_service(source={"type": "docker", "name": "myorg/image:latest"}))

    assert errors == {
        "services.echo.source.type": ["docker sources are not supported; use local or git."]
    }


def test_absolute_local_path() -> None:
    errors = _errors(_with_service(source={"type": "local", "name": "/srv/code"}))

    reason = _reason(errors, "services.echo.source.name")
    assert "must be relative to the deployment's base path" in reason


def test_missing_path() -> None:
    errors = _errors(_with_service(path=None))

    assert errors == {"services.echo.path": ["Missing data for required field."]}


def test_import_path_not_module_colon_attr() -> None:
    # Given LlamaDeploy's kitchen-sink style path, which names a folder and no workflow
    errors = _errors(_with_service(path="src/python/app"))

    assert "'[dir/]module:attr'" in _reason(errors, "services.echo.path")


@pytest.mark.parametrize("service_id", ["two words", "a/b", "..", "."])
def test_service_id_unsafe_in_urls_and_folders(service_id: str) -> None:
    # Given a service id that cannot be a URL path segment or a folder name
    document = _minimal()
    document["services"] = {service_id: document["services"]["echo"]}
    # Then the file is refused, naming the service
    reason = _reason(_errors(document), f"services.{service_id}")
    assert f"Invalid name {service_id!r}" in reason


@pytest.mark.parametrize("path", ["../elsewhere/workflow:flow", "src/../../workflow:flow"])
def test_import_path_leaving_the_source_folder(path: str) -> None:
    errors = _errors(_with_service(path=path))

    assert "must not leave the service's source folder ('..')" in _reason(
        errors, "services.echo.path"
    )


def test_ui_path_leaving_the_source_folder() -> None:
    ui = {"name": "UI", "source": {"type": "local", "name": "ui"}, "path": "src/../../ui"}

    errors = _errors(_minimal(ui=ui))

    assert "must not leave the service's source folder ('..')" in _reason(errors, "ui.path")


def test_path_and_import_path_differ() -> None:
    errors = _errors(_with_service(import_path="other:workflow"))

    reason = _reason(errors, "services.echo.import-path")
    assert "Conflicts with 'path'" in reason


def test_port_out_of_range() -> None:
    errors = _errors(_with_service(port=70000))

    assert "less than or equal to 65535" in _reason(errors, "services.echo.port")


def test_env_with_a_nested_value() -> None:
    errors = _errors(_with_service(env={"GOOD": "x", "NESTED": {"a": 1}}))

    assert errors == {
        "services.echo.env.NESTED": ["Must be a string, number or boolean, not a mapping."]
    }


def test_default_service_naming_an_unknown_service_is_a_warning() -> None:
    # LlamaDeploy's own e2e files name a default-service that does not exist; it only warned.
    spec = load_deployment_mapping(_minimal(default_service="missing"))

    assert spec.default_service == "missing"
    [warning] = spec.warnings
    assert "'missing' is not a service of this deployment (services: echo)" in warning


def test_a_valid_file_has_no_warnings() -> None:
    assert load_deployment_mapping(_minimal(default_service="echo")).warnings == []


def test_ui_is_accepted_with_a_warning() -> None:
    ui = {"name": "My UI", "source": {"type": "local", "name": "ui"}}
    spec = load_deployment_mapping(_minimal(ui=ui))

    assert spec.ui is not None and spec.ui.source is not None
    assert spec.ui.source.location == "ui"
    assert ["ui is accepted and not served" in w for w in spec.warnings] == [True]


def test_a_stored_service_without_a_source_still_loads() -> None:
    # Earlier releases stored such services; deploying one is refused by the control plane,
    # but a spec read back from the database must load.
    spec = load_deployment_mapping(_with_service(source=None, path=None))

    assert spec.services["echo"].source is None


def test_unknown_message_queue_type() -> None:
    errors = _errors(_minimal(message_queue={"type": "zeromq"}))

    reason = _reason(errors, "message-queue.type")
    assert "simple, redis, rabbitmq, kafka, aws, solace" in reason


def test_yaml_syntax_error_reports_line_and_column() -> None:
    errors = _errors("name: [QuickStart\ncontrol-plane: {}\n")

    assert "line 2, column 14" in _reason(errors, "yaml")


def test_non_mapping_document() -> None:
    errors = _errors("- name: QuickStart\n")

    assert "must be a mapping" in _reason(errors, "yaml")


def test_empty_document() -> None:
    errors = _errors("# nothing but a comment\n")

    assert "empty" in _reason(errors, "yaml")


def test_source_name_and_location_differ() -> None:
    errors = _errors(_with_service(source={"type": "local", "name": "src", "location": "app"}))

    reason = _reason(errors, "services.echo.source.location")
    assert "Conflicts with 'name'" in reason


# --- errors as a whole ------------------------------------------------------------------------


def test_every_mistake_is_reported_at_once_one_line_per_field() -> None:
    # Given two independent mistakes
    document = _with_service(port=0)
    document["name"] = ""

    # When it is loaded
    with pytest.raises(DeploymentSpecError) as caught:
        load_deployment_mapping(document)

    # Then both are reported, one line each, and the error is a ConfigError
    lines = str(caught.value).splitlines()
    assert lines == [
        "name: Must not be empty.",
        "services.echo.port: Must be greater than or equal to 1 and less than or equal to 65535.",
    ]
    assert isinstance(caught.value, ConfigError)


def test_spec_error_survives_pickling() -> None:
    error = DeploymentSpecError({"name": ["Missing data for required field."]})

    copied = pickle.loads(pickle.dumps(error))

    assert copied.errors == error.errors


# --- what loads -------------------------------------------------------------------------------


def test_quickstart_example_loads() -> None:
    spec = load_deployment_file(EXAMPLES / "quickstart" / "deployment.yml")

    assert spec.name == "QuickStart"
    assert spec.control_plane.port == 8000
    assert spec.default_service == "echo_workflow"
    service = spec.services["echo_workflow"]
    assert service.source == SourceSpec(SourceType.LOCAL, "./src")
    assert (service.module_dir, service.module, service.attr) == ("", "workflow", "echo_workflow")
    assert spec.message_queue.type == "simple"
    assert spec.message_queue.options["port"] == 8001


def test_multistep_example_loads() -> None:
    spec = load_deployment_file(EXAMPLES / "multistep" / "deployment.yml")

    assert spec.name == "MultiStep"
    assert spec.default_service == "streaming_workflow"
    assert spec.services["streaming_workflow"].attr == "streaming_workflow"


def test_kitchen_sink_loads() -> None:
    spec = load_deployment(KITCHEN_SINK)

    assert spec.control_plane.state_store_uri == "redis://localhost:6379"
    assert spec.control_plane.cors_origins == ("*",)
    assert spec.message_queue.type == "redis"
    assert spec.message_queue.options["host"] == "redis"
    assert spec.message_queue.options["port"] == 6379
    assert spec.message_queue.options["exclusive_mode"] is False
    python = spec.services["myworkflow"]
    assert python.source is not None
    assert (python.source.git_url, python.source.git_ref) == (
        "https://github.com/myorg/myrepo.git",
        "dev",
    )
    assert python.env == {"VAR_1": "x", "VAR_2": "2"}
    assert python.env_files == (".env",)
    assert python.python_dependencies == ("llama-index-core<1", "requirements.txt")
    assert (python.module_dir, python.module, python.attr) == ("src/python", "app", "workflow")
    typescript = spec.services["another-workflow"]
    assert typescript.ts_dependencies["@llamaindex/core"] == "^0.2.0"
    assert (typescript.host, typescript.port) == ("localhost", 1314)
    assert list(spec.services) == ["myworkflow", "another-workflow"]


def test_llama_deploy_v09_spellings_load() -> None:
    document = _with_service(
        source={"type": "local", "location": "src", "sync_policy": "merge"},
        path=None,
        import_path="app/workflow:echo_workflow",
    )

    service = load_deployment_mapping(document).services["echo"]

    assert service.source == SourceSpec(SourceType.LOCAL, "src", "merge")
    assert service.import_path == "app/workflow:echo_workflow"


def test_same_value_under_both_spellings_loads() -> None:
    document = _with_service(
        source={"type": "local", "name": "src", "location": "src"},
        import_path="workflow:echo_workflow",
    )

    assert load_deployment_mapping(document).services["echo"].source is not None


def test_null_control_plane_and_message_queue_mean_defaults() -> None:
    text = yaml.safe_dump(_minimal()) + "message-queue:\n"
    text = text.replace("control-plane: {}", "control-plane:")

    spec = load_deployment(text)

    assert spec.control_plane.host == "127.0.0.1"
    assert spec.message_queue.type == "simple"


def test_local_location_may_climb_out_of_the_base_path() -> None:
    document = _with_service(source={"type": "local", "name": "../shared/src"})

    assert load_deployment_mapping(document).services["echo"].source is not None


def test_env_scalars_become_strings() -> None:
    document = _with_service(env={"RETRIES": 3, "RATIO": 0.5, "DEBUG": True, "NAME": "x"})

    env = load_deployment_mapping(document).services["echo"].env

    assert env == {"RETRIES": "3", "RATIO": "0.5", "DEBUG": "true", "NAME": "x"}


def test_ui_path_is_a_folder() -> None:
    # LlamaDeploy's with_ui.yaml gives the UI a folder, not module:attr.
    document = _minimal(
        ui={"name": "My Nextjs App", "source": {"type": "local", "name": "ui"}, "path": "src/ui"}
    )

    spec = load_deployment_mapping(document)

    assert spec.ui is not None
    assert spec.ui.import_path == "src/ui"


@pytest.mark.parametrize(
    ("location", "url", "ref"),
    [
        ("https://github.com/org/repo.git", "https://github.com/org/repo.git", None),
        ("https://github.com/org/repo.git@main", "https://github.com/org/repo.git", "main"),
        ("https://user@host/repo.git", "https://user@host/repo.git", None),
        ("https://user@host/repo.git@main", "https://user@host/repo.git", "main"),
        ("git@github.com:org/repo.git", "git@github.com:org/repo.git", None),
        ("git@github.com:org/repo.git@main", "git@github.com:org/repo.git", "main"),
        (
            "ssh://git@host:2222/org/repo.git@feature/x",
            "ssh://git@host:2222/org/repo.git",
            "feature/x",
        ),
        ("git@github.com/myorg/myrepo", "git@github.com/myorg/myrepo", None),
    ],
)
def test_git_location_splits_on_the_last_at_after_the_host(
    location: str, url: str, ref: str | None
) -> None:
    source = SourceSpec(SourceType.GIT, location)

    assert (source.git_url, source.git_ref) == (url, ref)


def test_git_location_with_an_empty_branch_is_refused() -> None:
    errors = _errors(_with_service(source={"type": "git", "name": "https://host/repo.git@"}))

    assert "empty" in _reason(errors, "services.echo.source.name")


@pytest.mark.parametrize(
    "text",
    [KITCHEN_SINK, (EXAMPLES / "quickstart" / "deployment.yml").read_text()],
    ids=["kitchen-sink", "quickstart"],
)
def test_to_dict_round_trips_through_yaml(text: str) -> None:
    spec = load_deployment(text)

    document = spec.to_dict()

    assert json.loads(json.dumps(document)) == document
    assert load_deployment(yaml.safe_dump(document)) == spec


# --- the example workflows run ----------------------------------------------------------------


def _import_example(example: str) -> ModuleType:
    """Import an example's workflow module from its file, as a worker would."""
    path = EXAMPLES / example / "src" / "workflow.py"
    module_spec = importlib.util.spec_from_file_location(f"celeriac_example_{example}", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_quickstart_workflow_echoes_its_message() -> None:
    module = _import_example("quickstart")

    async def run() -> Any:
        # A workflow run needs a running event loop from the moment it starts.
        return await module.echo_workflow.run(message="hi")

    result = asyncio.run(run())

    assert result == "Message received: hi"


def test_multistep_workflow_streams_progress_in_order() -> None:
    module = _import_example("multistep")

    async def run() -> tuple[list[float], Any]:
        handler = module.streaming_workflow.run(message="hello_world")
        progress = [
            event.progress
            async for event in handler.stream_events()
            if isinstance(event, module.ProgressEvent)
        ]
        return progress, await handler

    progress, result = asyncio.run(run())

    assert progress == [0.3, 0.6, 0.9]
    assert result == "hello_world_result_result_result"
