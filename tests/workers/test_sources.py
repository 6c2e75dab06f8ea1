"""Tests of source syncing: local folders in place, git repositories cloned per ref."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from config.deployment import (
    DeploymentSpec,
    ServiceSpec,
    SourceLayout,
    SourceSpec,
    SourceType,
    load_deployment,
)
from config.sources import SourcePolicy
from tests.workers.conftest import RecordingReporter, run_step, write_workflow
from workers import sources
from workers.errors import WorkflowLoadError
from workers.runtime import ServiceRuntime

MARKER = ".celeriac-source.json"
#: Any folder, and the ``file://`` repositories these tests make.
ANYWHERE = SourcePolicy(roots=None, git_schemes=frozenset({"file"}))


def sync_source(deployment: str, spec: ServiceSpec, base: Path, sources_dir: Path) -> SourceLayout:
    """Sync a source under the policy that allows the tests' own folders and repositories."""
    return sources.sync_source(deployment, spec, base, sources_dir, ANYWHERE)


def service(source_type: str, location: str) -> ServiceSpec:
    """The service ``svc`` of deployment ``Dep`` with one source."""
    return deployment(source_type, location).services["svc"]


def deployment(source_type: str, location: str) -> DeploymentSpec:
    """A deployment ``Dep`` whose one service ``svc`` runs ``workflow:wf`` from a source."""
    return load_deployment(
        "name: Dep\n"
        "control-plane: {}\n"
        "services:\n"
        "  svc:\n"
        "    name: Service\n"
        f"    source: {{type: {source_type}, name: '{location}'}}\n"
        "    path: workflow:wf\n"
    )


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` with a fixed identity and no user or system configuration."""
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    return done.stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository: branch ``main`` answers "from main", branch ``v2`` "from v2"."""
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "--quiet", "--initial-branch", "main")
    write_workflow(path, '"from main"')
    git(path, "add", "workflow.py")
    git(path, "commit", "--quiet", "-m", "main")
    git(path, "checkout", "--quiet", "-b", "v2")
    write_workflow(path, '"from v2"')
    git(path, "commit", "--quiet", "-am", "v2")
    git(path, "checkout", "--quiet", "main")
    return path


@pytest.fixture
def sources_dir(tmp_path: Path) -> Path:
    """Where clones go."""
    return tmp_path / "sources"


def test_local_source_resolves_relative_to_the_base_path(tmp_path: Path) -> None:
    (tmp_path / "project" / "src").mkdir(parents=True)
    root = sync_source("Dep", service("local", "./src"), tmp_path / "project", tmp_path / "s").root
    assert root == (tmp_path / "project" / "src").resolve()
    # A local source is used in place: nothing is copied
    assert not (tmp_path / "s").exists()


def test_missing_local_folder_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(WorkflowLoadError, match=r"'\./gone' is not a folder"):
        sync_source("Dep", service("local", "./gone"), tmp_path, tmp_path / "s")


def test_git_source_clones_the_default_branch(repo: Path, sources_dir: Path) -> None:
    # When a git source without a branch is synced
    root = sync_source("Dep", service("git", f"file://{repo}"), Path("."), sources_dir).root
    # Then the clone holds the main branch, inside the sources folder
    assert root.is_relative_to(sources_dir)
    assert '"from main"' in (root / "workflow.py").read_text()
    assert json.loads((root / MARKER).read_text()) == {"url": f"file://{repo}", "ref": None}


def test_git_source_clones_the_named_branch(repo: Path, sources_dir: Path) -> None:
    root = sync_source("Dep", service("git", f"file://{repo}@v2"), Path("."), sources_dir).root
    assert '"from v2"' in (root / "workflow.py").read_text()
    assert json.loads((root / MARKER).read_text())["ref"] == "v2"


def test_second_sync_of_the_same_ref_reuses_the_clone(repo: Path, sources_dir: Path) -> None:
    # Given a clone of main, marked by a file the clone itself never had
    spec = service("git", f"file://{repo}@main")
    root = sync_source("Dep", spec, Path("."), sources_dir).root
    (root / "left-by-the-test").write_text("still here")
    marker_mtime = (root / MARKER).stat().st_mtime_ns
    # When the same ref is synced again
    again = sync_source("Dep", spec, Path("."), sources_dir).root
    # Then the same clone comes back untouched
    assert again == root
    assert (again / "left-by-the-test").read_text() == "still here"
    assert (again / MARKER).stat().st_mtime_ns == marker_mtime


def test_sync_of_another_ref_replaces_the_clone(repo: Path, sources_dir: Path) -> None:
    # Given a clone of main
    root = sync_source("Dep", service("git", f"file://{repo}"), Path("."), sources_dir).root
    (root / "left-by-the-test").write_text("old clone")
    # When the service moves to branch v2
    moved = sync_source("Dep", service("git", f"file://{repo}@v2"), Path("."), sources_dir).root
    # Then the old clone is replaced by one of v2, with no leftovers beside it
    assert moved == root
    assert not (moved / "left-by-the-test").exists()
    assert '"from v2"' in (moved / "workflow.py").read_text()
    assert sorted(p.name for p in moved.parent.iterdir()) == ["svc"]


def test_unknown_branch_is_a_load_error_naming_the_url(repo: Path, sources_dir: Path) -> None:
    url = f"file://{repo}"
    with pytest.raises(WorkflowLoadError) as caught:
        sync_source("Dep", service("git", f"{url}@no-such-branch"), Path("."), sources_dir)
    assert url in str(caught.value)
    assert "no-such-branch" in str(caught.value)
    # And nothing half-cloned stays behind
    assert not (sources_dir / "Dep" / "svc").exists()
    assert list((sources_dir / "Dep").iterdir()) == []


def test_bad_url_is_a_load_error_naming_the_url(tmp_path: Path, sources_dir: Path) -> None:
    url = f"file://{tmp_path}/not-a-repository"
    with pytest.raises(WorkflowLoadError, match="not-a-repository"):
        sync_source("Dep", service("git", url), Path("."), sources_dir)


def test_failed_sync_keeps_the_previous_clone(repo: Path, sources_dir: Path) -> None:
    root = sync_source("Dep", service("git", f"file://{repo}"), Path("."), sources_dir).root
    with pytest.raises(WorkflowLoadError):
        sync_source("Dep", service("git", f"file://{repo}@no-such-branch"), Path("."), sources_dir)
    assert '"from main"' in (root / "workflow.py").read_text()


def test_runtime_runs_a_workflow_from_a_git_source(repo: Path, tmp_path: Path) -> None:
    # Given a runtime serving a deployment whose service lives on branch v2 of a repository
    runtime = ServiceRuntime(tmp_path / "data" / "sources", source_policy=lambda: ANYWHERE)
    try:
        runtime.install(deployment("git", f"file://{repo}@v2"), tmp_path)
        reporter = RecordingReporter()
        # When a step runs
        outcome = runtime.run(run_step("Dep", "svc"), reporter)
    finally:
        runtime.close()
    # Then the workflow was cloned, loaded and run from that branch
    assert outcome.ok is True, outcome.error
    assert outcome.result == "from v2"
    assert (tmp_path / "data" / "sources" / "Dep" / "svc" / "workflow.py").is_file()


# -- the worker's own policy (defence in depth) --------------------------------------------------


def test_a_local_source_outside_the_workers_roots_is_refused(tmp_path: Path) -> None:
    # Given a worker whose roots hold only ``allowed``, and a source reached through ``..``
    (tmp_path / "allowed").mkdir()
    (tmp_path / "elsewhere" / "src").mkdir(parents=True)
    only = SourcePolicy(roots=((tmp_path / "allowed").resolve(),), git_schemes=frozenset())
    spec = service("local", "../elsewhere/src")
    # When it syncs the source, then it refuses, saying why, and nothing is copied
    with pytest.raises(WorkflowLoadError) as caught:
        sources.sync_source("Dep", spec, tmp_path / "allowed", tmp_path / "s", only)
    assert str(caught.value) == (
        f"service 'svc': local source '../elsewhere/src' under {tmp_path / 'allowed'} is "
        "refused by this worker: the folder lies outside the folders this server takes "
        "sources from (CELERIAC_SOURCE_ROOTS)"
    )
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "location", ["git@example.org:o/r.git", "ext::sh -c touch% /tmp/celeriac-pwned", "/srv/r"]
)
def test_a_git_source_of_a_scheme_not_allowed_is_refused_before_git_runs(
    tmp_path: Path, location: str
) -> None:
    spec = ServiceSpec(
        id="svc", name="S", source=SourceSpec(SourceType.GIT, location), import_path="w:wf"
    )
    https = SourcePolicy(roots=None, git_schemes=frozenset({"https"}))
    with pytest.raises(WorkflowLoadError, match=r"is refused by this worker: git URLs of scheme"):
        sources.sync_source("Dep", spec, tmp_path, tmp_path / "s", https)
    assert not (tmp_path / "s").exists()
    assert not Path("/tmp/celeriac-pwned").exists()


def test_a_url_that_reads_as_an_option_never_reaches_git(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    spec = ServiceSpec(
        id="svc",
        name="S",
        source=SourceSpec(SourceType.GIT, f"--upload-pack=touch {marker}"),
        import_path="w:wf",
    )
    with pytest.raises(WorkflowLoadError, match="cannot start with '-'"):
        sources.sync_source("Dep", spec, tmp_path, tmp_path / "s", ANYWHERE)
    assert not marker.exists()


def test_git_itself_refuses_a_url_rewritten_to_a_scheme_not_allowed(
    repo: Path, sources_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given git's configuration rewrites an https URL to the local repository (file://)
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", f"url.file://{repo}.insteadOf")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "https://example.org/r.git")
    spec = service("git", "https://example.org/r.git")
    # When only https is allowed, then git refuses the file transport
    https = SourcePolicy(roots=None, git_schemes=frozenset({"https"}))
    with pytest.raises(WorkflowLoadError, match="transport 'file' not allowed"):
        sources.sync_source("Dep", spec, Path("."), sources_dir, https)
    # And with file allowed too, the same source clones
    both = SourcePolicy(roots=None, git_schemes=frozenset({"https", "file"}))
    assert sources.sync_source("Dep", spec, Path("."), sources_dir, both).root / "workflow.py"


def test_a_failed_clone_never_shows_the_urls_credentials(tmp_path: Path) -> None:
    # Given a URL with a password, to a port where nothing listens
    spec = service("git", "https://alice:s3cret@127.0.0.1:9/r.git")
    https = SourcePolicy(roots=None, git_schemes=frozenset({"https"}))
    with pytest.raises(WorkflowLoadError) as caught:
        sources.sync_source("Dep", spec, Path("."), tmp_path / "s", https)
    assert "s3cret" not in str(caught.value)
    assert "alice" not in str(caught.value)
    assert "https://***@127.0.0.1:9/r.git" in str(caught.value)


def test_a_durable_runs_version_keeps_the_commit_it_first_cloned(
    repo: Path, sources_dir: Path
) -> None:
    # Given version 1 of a git source on main, cloned for a durable run
    spec = service("git", f"file://{repo}@main")
    first = sources.sync_source("Dep", spec, Path("."), sources_dir, ANYWHERE, version=1).root
    # When main moves on, and version 2 (a reload, same branch) is cloned too
    write_workflow(repo, '"main moved on"')
    git(repo, "commit", "--quiet", "-am", "moved")
    second = sources.sync_source("Dep", spec, Path("."), sources_dir, ANYWHERE, version=2).root
    again = sources.sync_source("Dep", spec, Path("."), sources_dir, ANYWHERE, version=1).root
    # Then each version has its own clone: version 1 still runs the commit it was cloned at
    assert first == again != second
    assert '"from main"' in (again / "workflow.py").read_text()
    assert '"main moved on"' in (second / "workflow.py").read_text()
