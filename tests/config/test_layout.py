"""Where a service's module and env files are found: LlamaDeploy 0.8's layout and the older one."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.deployment import SourceLayout
from config.errors import SourceFileNotFound


def _tree(root: Path, *files: str) -> Path:
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    return root


def test_llama_deploy_08_layout_resolves_from_the_deployment_folder(tmp_path: Path) -> None:
    # Given LlamaDeploy 0.8's quick start: name: src, path: src/workflow:echo_workflow
    _tree(tmp_path, "src/workflow.py", "src/.env")
    layout = SourceLayout.local(tmp_path, "src")
    # Then the module and the env file are found where the deployment folder says
    assert layout.module_folder("src", "workflow") == tmp_path.resolve() / "src"
    assert layout.env_file("src/.env") == tmp_path.resolve() / "src" / ".env"


def test_older_layout_resolves_from_inside_the_source(tmp_path: Path) -> None:
    # Given the layout before 0.8: name: ./src, path: workflow:echo_workflow
    _tree(tmp_path, "src/workflow.py", "src/.env")
    layout = SourceLayout.local(tmp_path, "./src")
    assert layout.module_folder("", "workflow") == tmp_path.resolve() / "src"
    assert layout.env_file(".env") == tmp_path.resolve() / "src" / ".env"


def test_package_module_in_the_deployment_folder(tmp_path: Path) -> None:
    # LlamaDeploy's deployment2.yml: name: src, path: src:my_workflow (the package itself)
    _tree(tmp_path, "src/__init__.py")
    layout = SourceLayout.local(tmp_path, "src")
    assert layout.module_folder("", "src") == tmp_path.resolve()


def test_the_deployment_folder_wins_when_both_layouts_match(tmp_path: Path) -> None:
    _tree(tmp_path, "src/workflow.py", "src/src/workflow.py")
    layout = SourceLayout.local(tmp_path, "src")
    assert layout.module_folder("src", "workflow") == tmp_path.resolve() / "src"


def test_files_beside_the_source_are_not_part_of_it(tmp_path: Path) -> None:
    # Given a module next to the source folder, not inside it (LlamaDeploy copied only src)
    _tree(tmp_path, "src/other.py", "elsewhere/workflow.py", ".env")
    layout = SourceLayout.local(tmp_path, "src")
    # Then neither the module nor an env file outside the source is found
    with pytest.raises(SourceFileNotFound) as caught:
        layout.module_folder("elsewhere", "workflow")
    assert caught.value.tried == [tmp_path.resolve() / "src" / "elsewhere"]
    with pytest.raises(SourceFileNotFound):
        layout.env_file("../.env")


def test_a_symbolic_link_out_of_the_source_is_not_followed(tmp_path: Path) -> None:
    _tree(tmp_path, "src/.keep", "outside/workflow.py")
    (tmp_path / "src" / "linked").symlink_to(tmp_path / "outside")
    layout = SourceLayout.local(tmp_path, "src")
    with pytest.raises(SourceFileNotFound):
        layout.module_folder("src/linked", "workflow")


def test_not_found_names_every_place_tried(tmp_path: Path) -> None:
    _tree(tmp_path, "src/.keep")
    layout = SourceLayout.local(tmp_path, "src")
    with pytest.raises(SourceFileNotFound) as caught:
        layout.module_folder("src", "workflow")
    root = tmp_path.resolve()
    assert caught.value.tried == [root / "src", root / "src" / "src"]
    assert str(caught.value) == (
        f"module 'workflow' not found; looked in {root / 'src'}, {root / 'src' / 'src'}"
    )


def test_a_single_folder_is_both_deployment_folder_and_source(tmp_path: Path) -> None:
    # A git clone: LlamaDeploy cloned into the deployment folder itself
    _tree(tmp_path, "e2e/src/__init__.py", "data/.env")
    layout = SourceLayout.single(tmp_path)
    assert layout.module_folder("e2e", "src") == tmp_path.resolve() / "e2e"
    assert layout.env_file("data/.env") == tmp_path.resolve() / "data" / ".env"


def test_a_module_file_linked_from_outside_the_source_is_refused(tmp_path: Path) -> None:
    _tree(tmp_path, "src/.keep", "outside/workflow.py")
    (tmp_path / "src" / "workflow.py").symlink_to(tmp_path / "outside" / "workflow.py")
    layout = SourceLayout.local(tmp_path, "src")
    with pytest.raises(SourceFileNotFound):
        layout.module_folder("src", "workflow")
