"""Tests of ``celeriac worker``: what it refuses before it ever consumes a message."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from app.cli.main import cli
from tests.app.conftest import write_echo_deployment
from tests.conftest import QUICKSTART

REDIS_BROKER = "redis://127.0.0.1:6379/0"

NEEDY_YAML = """\
name: Needy

control-plane: {}

services:
  needy:
    name: Needy
    source:
      type: local
      name: ./src
    path: workflow:echo_workflow
    python-dependencies:
      - celeriac-no-such-package-xyz>=1.0
      - click>=1
      - pyyaml<1
"""


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No CELERIAC_* variable leaks in from the environment; profiles live in tmp_path."""
    for name in [n for n in os.environ if n.startswith("CELERIAC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CELERIAC_CONFIG", str(tmp_path / "profiles.yml"))
    monkeypatch.setenv("CELERIAC_DATA_DIR", str(tmp_path / "data"))


def worker(*args: str) -> Result:
    """Run ``celeriac ARGS...`` in this process."""
    return CliRunner().invoke(cli, list(args), prog_name="celeriac", catch_exceptions=False)


@pytest.mark.parametrize(
    "args",
    [
        ["worker"],
        ["worker", "--control-plane", "--deployment", "QuickStart"],
        ["worker", "--control-plane", "-d", "QuickStart", "-d", "MultiStep"],
    ],
)
def test_either_control_plane_or_deployments_is_a_usage_error(
    args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither or both of --control-plane and --deployment: exit 2 saying which to give."""
    monkeypatch.setenv("CELERIAC_BROKER_URL", REDIS_BROKER)
    result = worker(*args)
    assert result.exit_code == 2, result.output
    assert "--control-plane" in result.output
    assert "--deployment" in result.output


@pytest.mark.parametrize("args", [["worker", "--control-plane"], ["worker", "-d", "QuickStart"]])
@pytest.mark.parametrize("broker", [None, "", "memory://"])
def test_without_a_broker_the_worker_points_at_the_embedded_mode(
    args: list[str], broker: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No CELERIAC_BROKER_URL (or memory://): refused, because `celeriac serve` runs them all."""
    if broker is not None:
        monkeypatch.setenv("CELERIAC_BROKER_URL", broker)
    result = worker(*args)
    assert result.exit_code == 2, result.output
    assert "CELERIAC_BROKER_URL" in result.output
    assert "embedded" in result.output
    assert "celeriac serve" in result.output


def test_an_unknown_deployment_is_named(live_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--deployment Unknown`` against a live server exits non-zero naming it and the server."""
    # Given a broker in the environment and a live server that knows the quick start only
    monkeypatch.setenv("CELERIAC_BROKER_URL", REDIS_BROKER)
    assert worker("-s", live_server, "deploy", str(QUICKSTART)).exit_code == 0
    # When a worker is asked to serve a deployment the server does not have
    result = worker("-s", live_server, "worker", "--deployment", "Unknown")
    # Then it stops before consuming, naming the deployment and where it looked
    assert result.exit_code == 1, result.output
    assert "'Unknown'" in result.output
    assert live_server in result.output
    assert "Traceback" not in result.output


def test_an_unknown_service_is_named_with_the_known_ones(
    live_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--service`` naming no service of the deployment: refused, listing the services."""
    monkeypatch.setenv("CELERIAC_BROKER_URL", REDIS_BROKER)
    assert worker("-s", live_server, "deploy", str(QUICKSTART)).exit_code == 0
    result = worker("-s", live_server, "worker", "-d", "QuickStart", "--service", "nope")
    assert result.exit_code == 1, result.output
    assert "nope" in result.output
    assert "echo_workflow" in result.output


def test_an_unreachable_server_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """A service worker whose API server does not answer says where it tried."""
    monkeypatch.setenv("CELERIAC_BROKER_URL", REDIS_BROKER)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    result = worker("-s", closed, "worker", "-d", "QuickStart")
    assert result.exit_code == 1, result.output
    assert closed in result.output


def test_missing_python_dependencies_are_named(
    live_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requirements the environment lacks stop the worker, each named; met ones are not."""
    # Given a deployment whose service needs one absent package and one too-old version
    folder = tmp_path / "needy"
    write_echo_deployment(folder, "Needy", "needy: ")
    (folder / "deployment.yml").write_text(NEEDY_YAML)
    deployed = worker("-s", live_server, "deploy", str(folder / "deployment.yml"))
    assert deployed.exit_code == 0, deployed.output
    monkeypatch.setenv("CELERIAC_BROKER_URL", REDIS_BROKER)
    # When a worker is started for it
    result = worker("-s", live_server, "worker", "-d", "Needy")
    # Then it refuses, naming what is missing and how to get it installed
    assert result.exit_code == 1, result.output
    assert "celeriac-no-such-package-xyz>=1.0" in result.output
    assert "pyyaml<1" in result.output
    assert "click>=1" not in result.output
    assert "--install-dependencies" in result.output
