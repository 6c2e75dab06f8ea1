"""``celeriac init NAME``: a deployment folder that deploys and runs as made."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from app.cli.main import cli
from config.deployment import load_deployment_file


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Profiles in tmp_path, no server in the environment, tmp_path the working folder."""
    monkeypatch.setenv("CELERIAC_CONFIG", str(tmp_path / "config" / "profiles.yml"))
    monkeypatch.delenv("CELERIAC_SERVER", raising=False)
    monkeypatch.delenv("CELERIAC_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def celeriac(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="celeriac")


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_init_deploy_run(live_server: str, isolated: Path) -> None:
    # When a deployment folder is made
    made = celeriac("init", "hello-app")
    # Then it holds a deployment file, a workflow and a README, and says how to go on
    assert made.exit_code == 0, made.output
    folder = isolated / "hello-app"
    assert files(folder) == ["README.md", "deployment.yml", "src/workflow.py"]
    assert made.stdout.splitlines() == [
        "Made deployment hello-app in hello-app/. Deploy and run it:",
        "  celeriac deploy hello-app/deployment.yml",
        "  celeriac run -d hello-app -a name World",
    ]
    assert "celeriac run -d hello-app -a name World" in (folder / "README.md").read_text()
    spec = load_deployment_file(folder / "deployment.yml")
    assert (spec.name, spec.default_service) == ("hello-app", "hello")
    # And it deploys and runs as the commands printed say
    deployed = celeriac("-s", live_server, "deploy", "hello-app/deployment.yml")
    assert deployed.exit_code == 0, deployed.output
    assert deployed.stdout == "Deployment successful: hello-app\n"
    ran = celeriac("-s", live_server, "run", "-d", "hello-app", "-a", "name", "World")
    assert (ran.exit_code, ran.stdout) == (0, "Hello, World!\n"), ran.output


def test_dir_names_the_folder_and_a_name_yaml_would_misread_is_kept(
    live_server: str, isolated: Path
) -> None:
    # A name that YAML would read as a number, in a folder that exists and is empty
    (isolated / "empty").mkdir()
    made = celeriac("init", "1.0", "--dir", "empty")
    assert made.exit_code == 0, made.output
    assert load_deployment_file(isolated / "empty" / "deployment.yml").name == "1.0"
    assert celeriac("-s", live_server, "deploy", "empty/deployment.yml").exit_code == 0
    ran = celeriac("-s", live_server, "run", "-d", "1.0")
    assert (ran.exit_code, ran.stdout) == (0, "Hello, world!\n"), ran.output


def test_a_folder_that_is_not_empty_is_refused_and_left_alone(isolated: Path) -> None:
    (isolated / "taken").mkdir()
    (isolated / "taken" / "notes.txt").write_text("mine")
    (isolated / "afile").write_text("also mine")
    refused = celeriac("init", "taken")
    assert refused.exit_code == 1
    assert refused.stderr == (
        "Error: taken exists and is not an empty folder; give another NAME, or --dir PATH\n"
    )
    not_a_folder = celeriac("init", "other", "--dir", "afile")
    assert not_a_folder.exit_code == 2
    assert "Directory 'afile' is a file." in not_a_folder.stderr
    assert files(isolated / "taken") == ["notes.txt"]
    assert (isolated / "afile").read_text() == "also mine"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("my app", "Invalid name 'my app': use only letters, digits, '-', '_' and '.'"),
        ("a/b", "Invalid name 'a/b': use only letters, digits, '-', '_' and '.'"),
        ("..", "Invalid name '..': it cannot name a folder."),
    ],
)
def test_a_name_no_deployment_may_have_is_refused(isolated: Path, name: str, reason: str) -> None:
    before = sorted(isolated.rglob("*"))
    refused = celeriac("init", name)
    assert refused.exit_code == 2
    assert "Invalid value for NAME: " + reason in refused.stderr
    assert sorted(isolated.rglob("*")) == before
