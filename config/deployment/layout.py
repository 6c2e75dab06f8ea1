"""Where a service's files are: the deployment folder, and the source's own folder inside it.

LlamaDeploy 0.8 copies a local source named ``src`` to ``<deployment folder>/src`` and resolves
``path`` and every ``env-files`` entry from the deployment folder, so its files say
``path: src/workflow:echo_workflow`` and ``env-files: [src/.env]``. Before 0.8 the source's
contents landed in the deployment folder itself, so older files say ``name: ./src`` and
``path: workflow:echo_workflow``. Celeriac runs local sources in place, without a copy: the
deployment folder is the base path, and a file is looked up there first (only inside the
source, as LlamaDeploy copied nothing else), then inside the source. A git clone is both the
deployment folder and the source, as in LlamaDeploy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from config.errors import SourceFileNotFound


@dataclass(frozen=True)
class SourceLayout:
    """A service's deployment folder (``folder``) and its source's root (``root``)."""

    folder: Path
    root: Path

    @classmethod
    def local(cls, base_path: Path, location: str) -> SourceLayout:
        """A local source: the base path holds the source folder ``location``."""
        return cls(base_path.resolve(), (base_path / location).resolve())

    @classmethod
    def single(cls, root: Path) -> SourceLayout:
        """A source that is its own deployment folder (a git clone, or ``name: .``)."""
        resolved = root.resolve()
        return cls(resolved, resolved)

    def candidates(self, relative: str) -> list[Path]:
        """Where ``relative`` may be, in the order it is looked for."""
        found = []
        for start in (self.folder, self.root):
            path = (start / relative).resolve()
            # LlamaDeploy copied only the source: nothing beside it is part of the service.
            if path.is_relative_to(self.root) and path not in found:
                found.append(path)
        return found

    def find(self, relative: str, what: str, exists: Callable[[Path], bool]) -> Path:
        """The first candidate for ``relative`` that ``exists``; else SourceFileNotFound."""
        candidates = self.candidates(relative)
        for path in candidates:
            if exists(path):
                return path
        raise SourceFileNotFound(what, candidates or [(self.root / relative).resolve()])

    def module_folder(self, module_dir: str, module: str) -> Path:
        """The folder holding ``module`` (a ``.py`` file or a package) under ``module_dir``."""
        relative = f"{module_dir}/{module}" if module_dir else module

        def is_module(path: Path) -> bool:
            source_file = path.with_name(f"{module}.py")
            if source_file.is_file():
                return source_file.resolve().is_relative_to(self.root)
            return path.is_dir()

        try:
            return self.find(relative, f"module {module!r}", is_module).parent
        except SourceFileNotFound as exc:
            raise SourceFileNotFound(exc.what, [path.parent for path in exc.tried]) from None

    def env_file(self, name: str) -> Path:
        """The env file ``name``."""
        return self.find(name, f"env file {name!r}", Path.is_file)
