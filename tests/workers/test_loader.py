"""Tests of the workflow loader: isolation of user modules, errors, dependencies, environment."""

from __future__ import annotations

import asyncio
import importlib
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any

import pytest
from workflows import Workflow

import app
import config
from config.deployment import ServiceSpec, SourceLayout, load_deployment
from tests.conftest import REPO
from tests.workers.conftest import unique_name, write_file, write_workflow
from workers.errors import WorkflowLoadError
from workers.loader import load_workflow, missing_dependencies, service_environment


def service(path: str = "workflow:wf", **extra: str) -> ServiceSpec:
    """One local service ``svc`` built from YAML, with extra service keys as YAML text."""
    lines = "".join(f"    {key}: {value}\n" for key, value in extra.items())
    spec = load_deployment(
        "name: Dep\n"
        "control-plane: {}\n"
        "services:\n"
        "  svc:\n"
        "    name: Service\n"
        "    source: {type: local, name: ./src}\n"
        f"    path: {path}\n" + lines
    )
    return spec.services["svc"]


def run(workflow: Workflow, **kwargs: Any) -> Any:
    """Run a workflow to its result on a fresh event loop."""

    async def main() -> Any:
        return await workflow.run(**kwargs)

    return asyncio.run(main())


def test_two_deployments_with_a_module_of_the_same_name_stay_distinct(tmp_path: Path) -> None:
    # Given two deployments that both ship workflow.py, with different answers
    write_workflow(tmp_path / "one", '"from one"')
    write_workflow(tmp_path / "two", '"from two"')
    spec = service()
    # When both are loaded in this process
    first = load_workflow("DeployOne", spec, SourceLayout.single(tmp_path / "one"), {})
    second = load_workflow("DeployTwo", spec, SourceLayout.single(tmp_path / "two"), {})
    # Then they are two workflows from two modules, each with its own answer
    assert first is not second
    assert type(first).__module__ != type(second).__module__
    assert run(first) == "from one"
    assert run(second) == "from two"


def test_user_modules_named_app_and_config_shadow_nothing(tmp_path: Path) -> None:
    # Given a user folder with app.py and config.py next to a workflow that imports its sibling
    src = tmp_path / "src"
    write_file(src / "app.py", 'NAME = "user app"\n')
    write_file(src / "config.py", 'GREETING = "hello from the user config"\n')
    write_file(src / "helpers.py", "def shout(text: str) -> str:\n    return text.upper()\n")
    write_workflow(
        src,
        "shout(GREETING)",
        preamble="from .config import GREETING\nfrom .helpers import shout",
    )
    # When it is loaded and run
    workflow = load_workflow("Shadow", service(), SourceLayout.single(src), {})
    result = run(workflow)
    # Then the workflow used its own modules
    assert result == "HELLO FROM THE USER CONFIG"
    # And importing app and config still gives Celeriac's packages
    import app as app_after
    import config as config_after

    assert app_after is app
    assert config_after is config
    assert Path(app_after.__file__).resolve().is_relative_to(REPO)
    assert Path(config_after.__file__).resolve().is_relative_to(REPO)
    assert not hasattr(app_after, "NAME")
    assert not hasattr(config_after, "GREETING")
    # And a fresh import (a new worker process) would still find Celeriac's, not the user's
    for name in ("app", "config"):
        found = PathFinder.find_spec(name)
        assert found is not None and found.origin is not None
        assert Path(found.origin).resolve().is_relative_to(REPO), found.origin


def test_plain_import_of_a_sibling_module_works(tmp_path: Path) -> None:
    # Given a workflow that imports its helper module the plain (absolute) way
    write_file(tmp_path / "helpers.py", 'NAME = "plain helper"\n')
    write_workflow(tmp_path, "helpers.NAME", preamble="import helpers")
    # When it is loaded and run
    workflow = load_workflow("Plain", service(), SourceLayout.single(tmp_path), {})
    # Then the sibling module was found
    assert run(workflow) == "plain helper"


def test_two_deployments_with_same_named_plain_imported_helpers_stay_distinct(
    tmp_path: Path,
) -> None:
    # Given two deployments whose workflows both do "import helpers" of their own helpers.py
    for name in ("one", "two"):
        write_file(tmp_path / name / "helpers.py", f'NAME = "helper of {name}"\n')
        write_workflow(tmp_path / name, "helpers.NAME", preamble="import helpers")
    # When both are loaded in this process
    first = load_workflow("DeployOne", service(), SourceLayout.single(tmp_path / "one"), {})
    second = load_workflow("DeployTwo", service(), SourceLayout.single(tmp_path / "two"), {})
    # Then each runs with its own helper, not the one that happened to be imported first
    assert run(first) == "helper of one"
    assert run(second) == "helper of two"


def test_workflow_in_a_subfolder_of_the_source_is_found(tmp_path: Path) -> None:
    write_workflow(tmp_path / "pkg" / "inner", '"deep"', module="flow")
    workflow = load_workflow("Sub", service("pkg/inner/flow:wf"), SourceLayout.single(tmp_path), {})
    assert run(workflow) == "deep"


def test_missing_attribute_is_a_load_error(tmp_path: Path) -> None:
    write_workflow(tmp_path)
    with pytest.raises(WorkflowLoadError, match="no attribute 'nothing_here'"):
        load_workflow("Dep", service("workflow:nothing_here"), SourceLayout.single(tmp_path), {})


def test_attribute_that_is_not_a_workflow_is_a_load_error(tmp_path: Path) -> None:
    write_workflow(tmp_path, preamble="NOT_A_WORKFLOW = 42")
    with pytest.raises(WorkflowLoadError, match=r"NOT_A_WORKFLOW is a int, not a workflows"):
        load_workflow("Dep", service("workflow:NOT_A_WORKFLOW"), SourceLayout.single(tmp_path), {})


def test_module_that_raises_at_import_is_a_load_error(tmp_path: Path) -> None:
    write_file(tmp_path / "workflow.py", 'raise RuntimeError("cannot start without a key")\n')
    with pytest.raises(WorkflowLoadError) as caught:
        load_workflow("Dep", service(), SourceLayout.single(tmp_path), {})
    message = str(caught.value)
    assert "importing 'workflow'" in message
    assert "RuntimeError: cannot start without a key" in message
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_missing_module_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(WorkflowLoadError, match="module 'absent' not found; looked in "):
        load_workflow("Dep", service("absent:wf"), SourceLayout.single(tmp_path), {})


def test_missing_folder_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(
        WorkflowLoadError, match=r"module 'workflow' not found; looked in .*/nowhere$"
    ):
        load_workflow("Dep", service("nowhere/workflow:wf"), SourceLayout.single(tmp_path), {})


def test_module_sees_the_service_environment_while_it_is_imported(
    tmp_path: Path, scoped_environ: None
) -> None:
    # Given a module that reads a variable at import time
    write_workflow(
        tmp_path, "IMPORTED_WITH", preamble='IMPORTED_WITH = os.environ["CELERIAC_TEST_API_KEY"]'
    )
    # When it is loaded with that variable in the service's environment
    workflow = load_workflow(
        "Dep", service(), SourceLayout.single(tmp_path), {"CELERIAC_TEST_API_KEY": "secret-1"}
    )
    # Then the import saw it
    assert run(workflow) == "secret-1"


def test_missing_dependencies_reports_absent_packages_and_wrong_versions() -> None:
    missing = missing_dependencies(("surely-not-installed-celeriac-pkg", "pytest<1"))
    assert missing[0] == "surely-not-installed-celeriac-pkg"
    assert missing[1].startswith("pytest<1")
    assert "found" in missing[1]
    assert len(missing) == 2


def test_missing_dependencies_accepts_what_is_installed() -> None:
    assert missing_dependencies(("pytest>=1", "celery", "pydantic>=2")) == []


def test_service_with_a_missing_dependency_fails_to_load_naming_it(tmp_path: Path) -> None:
    # Given a valid workflow whose service asks for a package that is not installed
    write_workflow(tmp_path)
    spec = service(**{"python-dependencies": "[surely-not-installed-celeriac-pkg, pytest>=1]"})
    # When / Then loading names the missing package only
    with pytest.raises(WorkflowLoadError) as caught:
        load_workflow("Dep", spec, SourceLayout.single(tmp_path), {})
    assert "surely-not-installed-celeriac-pkg" in str(caught.value)
    assert "pytest" not in str(caught.value)


def test_env_files_win_over_inline_env_and_empty_values_are_skipped(tmp_path: Path) -> None:
    # Given inline variables and an env file that overrides one and leaves one empty
    write_file(tmp_path / ".env", "SHARED=from-file\nONLY_FILE=file\nEMPTY=\nKEPT=\n")
    spec = service(
        env="{SHARED: inline, ONLY_INLINE: inline, KEPT: inline}",
        **{"env-files": "[.env]"},
    )
    # When the service's environment is built
    env = service_environment(spec, SourceLayout.single(tmp_path))
    # Then the file wins where it has a value and empty values change nothing
    assert env == {
        "SHARED": "from-file",
        "ONLY_INLINE": "inline",
        "ONLY_FILE": "file",
        "KEPT": "inline",
    }


def test_later_env_files_win_over_earlier_ones(tmp_path: Path) -> None:
    write_file(tmp_path / "a.env", "X=a\nY=a\n")
    write_file(tmp_path / "conf" / "b.env", "X=b\n")
    spec = service(**{"env-files": "[a.env, conf/b.env]"})
    assert service_environment(spec, SourceLayout.single(tmp_path)) == {"X": "b", "Y": "a"}


def test_missing_env_file_is_a_load_error(tmp_path: Path) -> None:
    spec = service(env="{A: b}", **{"env-files": "[missing.env]"})
    with pytest.raises(WorkflowLoadError, match=r"missing\.env"):
        service_environment(spec, SourceLayout.single(tmp_path))


def test_a_source_folder_imported_as_a_package_reaches_nothing_beside_it(tmp_path: Path) -> None:
    # Given LlamaDeploy's deployment2.yml layout (name: src, path: src:wf) and a module that
    # lies beside the source folder, not in it
    write_workflow(tmp_path / "src", '"from the package"', module="flows")
    write_file(tmp_path / "src" / "__init__.py", "from .flows import wf\n")
    beside = unique_name("beside").lower()
    write_file(tmp_path / f"{beside}.py", "VALUE = 1\n")
    spec = load_deployment(
        "name: Dep\ncontrol-plane: {}\nservices:\n  svc:\n    name: S\n"
        "    source: {type: local, name: src}\n    path: src:wf\n"
    ).services["svc"]
    # When it is loaded
    workflow = load_workflow("Pkg", spec, SourceLayout.local(tmp_path, "src"), {})
    # Then the package and its own modules load, relative imports included
    assert run(workflow) == "from the package"
    # And the folder around the source is neither the package's parent nor on sys.path
    package = type(workflow).__module__.rsplit(".", 2)[0]
    assert package.startswith("_celeriac_services.Pkg_svc_")
    with pytest.raises(ImportError):
        importlib.import_module(f"{package}.{beside}")
    with pytest.raises(ImportError):
        importlib.import_module(beside)
