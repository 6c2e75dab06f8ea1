"""The versions of deployments a worker process holds: each one's newest, and earlier ones.

A step names the deployment version it was sent for. Most runs start over, so any version at
least as new does (a worker holding an older one fetches the newest first). A durable run
resumes from a journal written by the code it started on, so it needs exactly that version:
a worker holds earlier versions beside the newest (those it served before a reload, and those
it fetched by number from the control plane, which keeps them while durable tasks need them),
each with its own loaded workflows. The least recently used earlier versions are dropped past
:data:`KEPT_VERSIONS`.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from workflows import Workflow

from config.deployment import DeploymentSpec
from workers.errors import UnknownDeployment, WorkerError, WorkflowLoadError
from workers.inbox import EventTypes

#: Earlier versions of deployments a process keeps, the least recently used dropped first.
KEPT_VERSIONS = 8


@dataclass(frozen=True)
class LoadedService:
    """A service ready to run: its workflow object and its own environment."""

    workflow: Workflow
    env: dict[str, str]

    @functools.cached_property
    def event_types(self) -> EventTypes:
        """The events its workflow may be sent, by the names clients give them."""
        return EventTypes(self.workflow)


@dataclass
class Installed:
    """One version of a deployment in this process, with the services loaded from it."""

    spec: DeploymentSpec
    base_path: Path
    version: int
    services: dict[str, LoadedService] = field(default_factory=dict)


@dataclass(frozen=True)
class DeploymentSource:
    """A deployment as a worker gets it from the control plane."""

    spec: DeploymentSpec
    base_path: Path
    version: int
    #: The earlier versions the control plane keeps for durable tasks (current spec only).
    kept: tuple[int, ...] = ()


#: Looks a deployment up by name (over HTTP, from the control plane), for workers started
#: without knowing what they will serve.
Fetch = Callable[[str], DeploymentSource]

#: Looks one version of a deployment up by name and number.
FetchVersion = Callable[[str, int], DeploymentSource]


class Versions:
    """The deployment versions of one process (its callers hold a lock around each call)."""

    def __init__(self, fetch: Fetch | None = None, fetch_version: FetchVersion | None = None):
        self.fetch = fetch
        #: How to get an earlier version (None: durable runs pinned to one fail, naming it).
        self.fetch_version = fetch_version
        self._newest: dict[str, Installed] = {}
        self._earlier: OrderedDict[tuple[str, int], Installed] = OrderedDict()

    def install(self, spec: DeploymentSpec, base_path: Path, version: int) -> None:
        """Hold ``spec`` as its deployment's newest version; the version it replaces stays,
        as an earlier one (the same version again is replaced: nothing can need the old)."""
        new = Installed(spec, base_path, version)
        old = self._newest.get(spec.name)
        if old is not None and old.version > version:
            self._keep(spec.name, new)  # a late install of an older version
            return
        if old is not None and old.version < version:
            self._keep(spec.name, old)
        self._newest[spec.name] = new

    def remove(self, name: str) -> None:
        """Forget every version of a deployment."""
        self._newest.pop(name, None)
        for key in [key for key in self._earlier if key[0] == name]:
            del self._earlier[key]

    def served(self) -> list[str]:
        """Names of the deployments held."""
        return sorted(self._newest)

    def find(self, deployment: str, version: int, *, exact: bool) -> Installed:
        """The version a step for ``version`` runs on: the newest held (fetched first when
        none is held, or an older one), or, ``exact``, ``version`` itself."""
        newest = self._newest_for(deployment, version)
        if not exact or newest.version == version:
            return newest
        key = (deployment, version)
        kept = self._earlier.get(key)
        if kept is not None:
            self._earlier.move_to_end(key)
            return kept
        if self.fetch_version is None:
            raise WorkflowLoadError(
                f"deployment {deployment!r} version {version} is not available on this worker "
                f"(it holds version {newest.version}, and has no way to fetch another)"
            )
        try:
            source = self.fetch_version(deployment, version)
        except WorkerError:
            raise  # ControlPlaneUnreachable among them: the caller retries
        except Exception as exc:
            raise WorkflowLoadError(
                f"could not fetch version {version} of deployment {deployment!r}: {exc}"
            ) from exc
        kept = Installed(source.spec, source.base_path, source.version)
        self._keep(deployment, kept)
        return kept

    def _newest_for(self, deployment: str, version: int) -> Installed:
        installed = self._newest.get(deployment)
        if (installed is None or installed.version < version) and self.fetch is not None:
            try:
                source = self.fetch(deployment)
            except WorkerError:
                raise  # ControlPlaneUnreachable among them: the caller retries
            except Exception as exc:
                raise UnknownDeployment(
                    f"could not fetch deployment {deployment!r} from the control plane: {exc}"
                ) from exc
            self.install(source.spec, source.base_path, source.version)
            installed = self._newest[deployment]
        if installed is None:
            raise UnknownDeployment(f"deployment {deployment!r} is not served by this worker")
        return installed

    def _keep(self, name: str, installed: Installed) -> None:
        key = (name, installed.version)
        self._earlier[key] = installed
        self._earlier.move_to_end(key)
        while len(self._earlier) > KEPT_VERSIONS:
            self._earlier.popitem(last=False)
