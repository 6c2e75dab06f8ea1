"""Tests of the versions a worker holds: two versions of one deployment side by side, a durable
run on the version it started on, and a version fetched by number or found gone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from config.deployment import DeploymentSpec, load_deployment
from tests.workers.conftest import RecordingReporter, run_step, write_workflow
from workers import runtime as runtime_module
from workers.errors import UnknownDeployment
from workers.protocol import RunStep
from workers.runtime import ServiceRuntime
from workers.versions import DeploymentSource


def version(folder: str) -> DeploymentSpec:
    """Deployment ``Dep`` whose service ``svc`` loads ``workflow:wf`` from ``./<folder>``."""
    return load_deployment(
        "name: Dep\ncontrol-plane: {}\nservices:\n  svc:\n    name: svc\n"
        f"    source: {{type: local, name: ./{folder}}}\n    path: workflow:wf\n"
    )


def durable_step(number: int) -> RunStep:
    """A durable run's first step, sent for version ``number``."""
    return dataclasses.replace(run_step("Dep", "svc"), version=number, durable=True, fresh=True)


@pytest.fixture
def two_versions(tmp_path: Path) -> Path:
    """Version 1's code answers "one", version 2's "two", in folders of their own."""
    write_workflow(tmp_path / "v1", '"one"')
    write_workflow(tmp_path / "v2", '"two"')
    return tmp_path


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime_module, "STARTED_GRACE", 5.0)


def test_a_runtime_holds_two_versions_of_a_deployment_side_by_side(
    runtime: ServiceRuntime, reporter: RecordingReporter, two_versions: Path
) -> None:
    # Given version 1 served and loaded, then version 2 installed by a reload
    runtime.install(version("v1"), two_versions, 1)
    first = runtime.load("Dep", "svc", 1, exact=True)
    runtime.install(version("v2"), two_versions, 2)
    # When each version is asked for by number
    one = runtime.load("Dep", "svc", 1, exact=True)
    two = runtime.load("Dep", "svc", 2, exact=True)
    # Then version 1 is the one loaded before the reload, and each version's classes come
    # from a private package of its own
    assert one is first
    one_module, two_module = type(one.workflow).__module__, type(two.workflow).__module__
    assert ".Dep_svc_v1_" in one_module and ".Dep_svc_v2_" in two_module
    assert type(one.workflow) is not type(two.workflow)
    # And a durable run of each version answers with that version's code
    assert runtime.run(durable_step(1), reporter, redelivered=False).result == "one"  # type: ignore[union-attr]
    assert runtime.run(durable_step(2), reporter, redelivered=False).result == "two"  # type: ignore[union-attr]
    # And a run that is not durable (it starts over) takes the newest, as before
    plain = dataclasses.replace(run_step("Dep", "svc"), version=1)
    assert runtime.run(plain, reporter).result == "two"  # type: ignore[union-attr]


def test_a_version_the_worker_lacks_is_fetched_by_number_once(
    runtime: ServiceRuntime, reporter: RecordingReporter, two_versions: Path
) -> None:
    # Given a worker that serves version 2 and can fetch others by number
    asked: list[tuple[str, int]] = []

    def fetch_version(name: str, number: int) -> DeploymentSource:
        asked.append((name, number))
        return DeploymentSource(version("v1"), two_versions, number)

    runtime.versions.fetch_version = fetch_version
    runtime.install(version("v2"), two_versions, 2)
    # When two durable runs that started on version 1 come
    first = runtime.run(durable_step(1), reporter, redelivered=False)
    second = runtime.run(durable_step(1), reporter, redelivered=False)
    # Then both ran version 1's code, fetched once
    assert first is not None and first.result == "one"
    assert second is not None and second.result == "one"
    assert asked == [("Dep", 1)]


def test_a_version_the_control_plane_no_longer_has_fails_the_run_naming_it(
    runtime: ServiceRuntime, reporter: RecordingReporter, two_versions: Path
) -> None:
    # Given a worker serving version 2, whose control plane no longer keeps version 1
    def fetch_version(name: str, number: int) -> DeploymentSource:
        raise UnknownDeployment(f"version {number} of deployment {name!r} not found at here")

    runtime.versions.fetch_version = fetch_version
    runtime.install(version("v2"), two_versions, 2)
    # When a durable run that started on version 1 comes
    outcome = runtime.run(durable_step(1), reporter, redelivered=False)
    # Then it fails with an error naming the version, and never ran version 2's code
    assert outcome is not None and not outcome.ok
    assert outcome.error is not None
    assert "version 1 of deployment 'Dep'" in outcome.error["message"]
    assert outcome.result is None


def test_a_worker_that_cannot_fetch_versions_fails_a_run_pinned_to_another(
    runtime: ServiceRuntime, reporter: RecordingReporter, two_versions: Path
) -> None:
    # Given a worker serving version 2, with no way to fetch others
    runtime.install(version("v2"), two_versions, 2)
    # When a durable run of version 1 comes, then it fails naming the version
    outcome = runtime.run(durable_step(1), reporter, redelivered=False)
    assert outcome is not None and outcome.error is not None
    assert "version 1 is not available on this worker" in outcome.error["message"]
