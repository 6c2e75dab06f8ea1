"""Import a service's workflow from its source folder without clashing with anything else.

Each service's module is imported under a private package name
(``_celeriac_services.<deployment>_<service>_v<version>_<generation>``) whose ``__path__`` is
the service's module folder. Two versions of one deployment held side by side (a durable run
resumes on the version it started on) never share a class; two deployments that both ship
``workflow.py`` get two modules; a user file called ``app.py`` or ``config.py`` never shadows
Celeriac's packages; and relative imports inside the user's folder work.

Plain ``import helpers`` of a sibling module works too: while a service's module is imported,
its folder leads ``sys.path`` and same-named sibling modules of other services are set aside,
so each service binds its own ``helpers``. Modules already imported (Celeriac's ``app`` and
``config``, the standard library) are never replaced. Afterwards the folder stays at the *end*
of ``sys.path``, for imports done later inside functions; for those, the service loaded last
wins a name two services share, so import siblings at the top of the module or relatively.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import itertools
import re
import sys
import threading
import types
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from dotenv import dotenv_values
from packaging.requirements import InvalidRequirement, Requirement
from workflows import Workflow

from config.deployment import ServiceSpec, SourceLayout
from config.errors import SourceFileNotFound
from workers import environ
from workers.errors import WorkflowLoadError

ROOT_PACKAGE = "_celeriac_services"
_generation = itertools.count(1)
_import_lock = threading.Lock()


def service_environment(service: ServiceSpec, layout: SourceLayout) -> dict[str, str]:
    """The service's variables: inline ``env``, then ``env-files``, which win (as LlamaDeploy)."""
    env = dict(service.env)
    for name in service.env_files:
        try:
            path = layout.env_file(name)
        except SourceFileNotFound as exc:
            raise WorkflowLoadError(f"service {service.id!r}: {exc}") from exc
        env.update({k: v for k, v in dotenv_values(path).items() if v})
    return env


def missing_dependencies(requirements: tuple[str, ...]) -> list[str]:
    """The requirements that the running interpreter does not satisfy (nothing is installed)."""
    missing = []
    for line in requirements:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            # A path or URL: nothing to compare against; the import will tell.
            continue
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            missing.append(f"{line} (found {installed})")
    return missing


def load_workflow(
    deployment: str,
    service: ServiceSpec,
    layout: SourceLayout,
    env: Mapping[str, str],
    version: int = 1,
) -> Workflow:
    """Import ``service.import_path`` from its source (for ``version`` of its deployment)
    and return its ``Workflow`` instance."""
    missing = missing_dependencies(service.python_dependencies)
    if missing:
        raise WorkflowLoadError(
            f"service {service.id!r}: missing python dependencies: {', '.join(missing)}; "
            "install them into the worker's environment (Celeriac installs nothing by itself)"
        )
    try:
        module_dir = layout.module_folder(service.module_dir, service.module)
    except SourceFileNotFound as exc:
        raise WorkflowLoadError(f"service {service.id!r}: {exc}") from exc
    # LlamaDeploy's ``path: src:my_workflow`` imports the source folder itself as a package:
    # it is then the only folder the service's imports may reach, not the one around it.
    source_package = (module_dir / service.module).resolve() == layout.root
    folder = layout.root if source_package else module_dir
    with _import_lock:
        package = _make_package(
            deployment, service.id, version, [] if source_package else [module_dir]
        )
        try:
            with environ.scoped(env), _siblings_first(folder):
                module = _import(f"{package}.{service.module}", folder if source_package else None)
        except ModuleNotFoundError as exc:
            provided = _provided_by_extra(exc.name)
            if provided is None:
                raise _import_failed(service, module_dir, exc) from exc
            module_name, extra = provided
            raise WorkflowLoadError(
                f"service {service.id!r}: this workflow imports {module_name}, which is not "
                f"installed: pip install 'celeriac[{extra}]'"
            ) from exc
        except Exception as exc:
            raise _import_failed(service, module_dir, exc) from exc
    workflow = getattr(module, service.attr, None)
    if workflow is None:
        raise WorkflowLoadError(
            f"service {service.id!r}: module {service.module!r} has no attribute {service.attr!r}"
        )
    if not isinstance(workflow, Workflow):
        raise WorkflowLoadError(
            f"service {service.id!r}: {service.module}:{service.attr} is a "
            f"{type(workflow).__name__}, not a workflows.Workflow instance"
        )
    return workflow


def _import(name: str, package_folder: Path | None) -> types.ModuleType:
    """Import ``name``: through its private package's path, or, for a package that is a
    whole source folder, from that folder alone."""
    if package_folder is None:
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(
        name, package_folder / "__init__.py", submodule_search_locations=[str(package_folder)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"{package_folder} is not a Python package", name=name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import_failed(service: ServiceSpec, module_dir: Path, exc: Exception) -> WorkflowLoadError:
    return WorkflowLoadError(
        f"service {service.id!r}: importing {service.module!r} from {module_dir} failed: "
        f"{type(exc).__name__}: {exc}"
    )


#: Packages that Celeriac's extras install, by the module a workflow imports them as.
_EXTRAS = {"llama_index.core": "llama-index"}


def _provided_by_extra(missing: str | None) -> tuple[str, str] | None:
    """The module and the extra that a failed import lacked, if an extra provides it.

    ``llama_index`` or ``llama_index.core`` not found means llama-index-core is absent (every
    ``llama_index`` integration imports it too); ``llama_index.core.something`` not found is a
    module that the installed llama-index-core does not have, which the extra cannot cure.
    """
    for module, extra in _EXTRAS.items():
        if missing is not None and (missing == module or module.startswith(missing + ".")):
            return module, extra
    return None


#: Top-level module name -> the user folder it was imported from, for plain sibling imports.
_sibling_origin: dict[str, Path] = {}


@contextmanager
def _siblings_first(module_dir: Path) -> Iterator[None]:
    """Resolve plain imports of ``module_dir``'s own modules to its files, during an import."""
    local = {p.stem for p in module_dir.glob("*.py")} | {
        p.parent.name for p in module_dir.glob("*/__init__.py")
    }
    # Set aside other services' modules of the same names; never Celeriac's or the stdlib's.
    for name in [n for n in list(sys.modules) if n.split(".")[0] in local]:
        if name.split(".")[0] in _sibling_origin:
            del sys.modules[name]
    before = set(sys.modules)
    folder = str(module_dir)
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.path.remove(folder)
        if folder not in sys.path:
            sys.path.append(folder)
        for name in set(sys.modules) - before:
            top = name.split(".")[0]
            if top in local:
                _sibling_origin[top] = module_dir


def public_name(qualified: str) -> str:
    """A name imported under a private package, as the user's own folder spells it
    (``_celeriac_services.Suite_progress_v1_1.flows.ProgressEvent`` is
    ``flows.ProgressEvent``)."""
    if not qualified.startswith(f"{ROOT_PACKAGE}."):
        return qualified
    return qualified.split(".", 2)[2]


def unload(prefix: str) -> None:
    """Forget modules imported under a private package (after a reload or delete)."""
    for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
        del sys.modules[name]


def _make_package(deployment: str, service_id: str, version: int, path: list[Path]) -> str:
    """Register a fresh private package whose modules are found in ``path``; its name."""
    if ROOT_PACKAGE not in sys.modules:
        root = types.ModuleType(ROOT_PACKAGE, "Workflows loaded by Celeriac.")
        root.__path__ = []
        sys.modules[ROOT_PACKAGE] = root
    slug = re.sub(r"\W", "_", f"{deployment}_{service_id}_v{version}")
    name = f"{ROOT_PACKAGE}.{slug}_{next(_generation)}"
    package = types.ModuleType(
        name, f"Source of service {service_id!r} of {deployment!r}, version {version}."
    )
    package.__path__ = [str(folder) for folder in path]
    package.__package__ = name
    sys.modules[name] = package
    return name
