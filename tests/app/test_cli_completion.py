"""Shell completion of deployment names, and ``-s`` meaning the global ``--server`` only."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.shell_completion import ShellComplete
from click.testing import CliRunner, Result

from app.cli import completion
from app.cli.completion import COMPLETION_TIMEOUT, deployment_names
from app.cli.main import cli
from app.sdk import Client
from tests.conftest import HITL, MULTISTEP, QUICKSTART
from tests.support.network import closed_port


@pytest.fixture(autouse=True)
def isolated_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERIAC_CONFIG", str(tmp_path / "config" / "profiles.yml"))
    monkeypatch.delenv("CELERIAC_SERVER", raising=False)
    monkeypatch.delenv("CELERIAC_TOKEN", raising=False)


@pytest.fixture
def three(live_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The live server with three deployments: QuickStart, MultiStep, HumanInTheLoop.

    Completions from it may take longer than a shell's patience: on a machine loaded by
    other test runs an answer can take over half a second, which would complete nothing
    (the timeout itself is tested against servers that never answer)."""
    monkeypatch.setattr(completion, "COMPLETION_TIMEOUT", 30.0)
    with Client(live_server) as client:
        for path in (QUICKSTART, MULTISTEP, HITL):
            client.deployments.create(path)
    return live_server


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server that takes connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def celeriac(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="celeriac", env=env)


def complete(server: str | None, incomplete: str) -> list[str]:
    """What ``deployment_names`` offers, called as click calls it, the global options
    parsed (``-s SERVER`` if given)."""
    ctx = cli.make_context(
        "celeriac", [*(["-s", server] if server else []), "status"], resilient_parsing=True
    )
    param = next(p for p in cli.params if p.name == "server")
    return [item.value for item in deployment_names(ctx, param, incomplete)]


# --- completing deployment names ---------------------------------------------------------------


def test_names_starting_with_what_is_typed_come_from_the_server(three: str) -> None:
    assert complete(three, "") == ["HumanInTheLoop", "MultiStep", "QuickStart"]
    assert complete(three, "Mu") == ["MultiStep"]
    assert complete(three, "x") == []


def test_the_server_comes_from_the_variable_or_the_profile_too(
    three: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELERIAC_SERVER", three)
    assert complete(None, "Q") == ["QuickStart"]
    monkeypatch.delenv("CELERIAC_SERVER")
    assert celeriac("config", "set-profile", "here", "--server", three).exit_code == 0
    assert celeriac("config", "use-profile", "here").exit_code == 0
    assert complete(None, "H") == ["HumanInTheLoop"]


def test_on_any_error_nothing_is_completed_silently_and_soon(
    silent_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for server in (f"http://127.0.0.1:{closed_port()}", silent_server, "not a url"):
        started = time.monotonic()
        assert complete(server, "") == []
        assert time.monotonic() - started < COMPLETION_TIMEOUT + 0.5
    assert capsys.readouterr() == ("", "")


def test_click_completes_d_and_name_arguments_with_deployments(three: str) -> None:
    shell = ShellComplete(cli, {}, "celeriac", "_CELERIAC_COMPLETE")

    def offered(args: list[str], incomplete: str) -> list[str]:
        return [item.value for item in shell.get_completions(args, incomplete)]

    assert offered(["-s", three, "run", "-d"], "Qu") == ["QuickStart"]
    assert offered(["-s", three, "tasks", "list", "--deployment"], "M") == ["MultiStep"]
    assert offered(["-s", three, "deployments", "get"], "H") == ["HumanInTheLoop"]
    assert offered(["-s", three, "worker", "-d"], "") == [
        "HumanInTheLoop",
        "MultiStep",
        "QuickStart",
    ]


def test_the_shell_scripts_and_a_completion_through_the_variable(three: str) -> None:
    # The scripts the README has shells source
    for shell, marker in (("bash", "complete -o"), ("zsh", "compdef"), ("fish", "complete")):
        script = celeriac(env={"_CELERIAC_COMPLETE": f"{shell}_source"})
        assert script.exit_code == 0
        assert marker in script.stdout and "_CELERIAC_COMPLETE" in script.stdout
    # And what bash asks of the command at a <Tab>
    asked = celeriac(
        env={
            "_CELERIAC_COMPLETE": "bash_complete",
            "COMP_WORDS": f"celeriac -s {three} run -d Mu",
            "COMP_CWORD": "5",
        }
    )
    assert asked.stdout.splitlines() == ["plain,MultiStep"]


# --- -s is the server ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "command", "service"),
    [
        (["run", "-d", "QuickStart", "-s", "echo_workflow"], "run", True),
        (
            ["tasks", "send-event", "-d", "D", "t1", "--type", "T", "-s", "ask"],
            "tasks send-event",
            True,
        ),
        (["tasks", "list", "-d", "D", "-s", "http://127.0.0.1:1"], "tasks list", False),
        (["deployments", "list", "--server", "http://127.0.0.1:1"], "deployments list", False),
    ],
)
def test_s_after_a_command_is_a_usage_error_that_says_what_it_is(
    args: list[str], command: str, service: bool
) -> None:
    result = celeriac(*args)
    assert result.exit_code == 2
    expected = (
        f"Error: -s is the global --server option: give it before the command "
        f"(celeriac -s URL {command} ...)"
    )
    if service:
        expected += "; for the service, use --service (or -S)"
    assert result.stderr.splitlines()[-1] == expected
    assert f"Usage: celeriac {command} [OPTIONS]" in result.stderr


def test_service_is_capital_s_everywhere() -> None:
    for command in (["run"], ["tasks", "send-event"], ["worker"]):
        helped = celeriac(*command, "-h")
        assert helped.exit_code == 0
        assert "-S, --service" in helped.stdout
        assert "-s," not in helped.stdout
    assert "-s, --server" in celeriac("-h").stdout


def test_an_unknown_option_other_than_s_keeps_clicks_message() -> None:
    result = celeriac("run", "-d", "QuickStart", "--nope")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == "Error: No such option '--nope'."
