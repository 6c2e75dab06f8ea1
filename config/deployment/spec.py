"""The deployment spec: what a validated deployment file holds, as frozen dataclasses.

Each part turns back into the YAML's own spelling with ``to_dict``; validation and loading
live in ``config.deployment.schema`` and ``config.deployment.loading``.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

from config.deployment.controls import ServiceControls

SYNC_POLICIES = ("replace", "merge", "skip", "fail")
UI_SERVICE_ID = "ui"


class SourceType(str, enum.Enum):
    """Where a service's code comes from."""

    LOCAL = "local"
    GIT = "git"
    DOCKER = "docker"


@dataclass(frozen=True)
class SourceSpec:
    """Where to fetch a service's code: a folder next to the YAML file or a git repository."""

    type: SourceType
    location: str
    sync_policy: str | None = None

    @property
    def git_url(self) -> str:
        """The clone URL of a git location, without its ``@branch`` suffix."""
        return split_git_location(self.location)[0]

    @property
    def git_ref(self) -> str | None:
        """The branch after the ``@`` that ends a git location, or None."""
        return split_git_location(self.location)[1]

    def to_dict(self) -> dict[str, Any]:
        """Return the ``source`` mapping in the YAML's spelling."""
        # ``name`` is the spelling that every LlamaDeploy version reads.
        document: dict[str, Any] = {"type": self.type.value, "name": self.location}
        if self.sync_policy is not None:
            document["sync_policy"] = self.sync_policy
        return document


@dataclass(frozen=True)
class ServiceSpec:
    """One workflow of a deployment (or the deployment's UI)."""

    id: str
    name: str
    source: SourceSpec | None = None
    import_path: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    env_files: tuple[str, ...] = ()
    python_dependencies: tuple[str, ...] = ()
    host: str | None = None
    port: int | None = None
    ts_dependencies: dict[str, str] = field(default_factory=dict)
    #: Celeriac's task controls, from the service's ``celeriac`` block (None: none given).
    controls: ServiceControls | None = None

    @property
    def durable(self) -> bool:
        """Whether the service's runs are journaled (``celeriac: {durable: true}``)."""
        return self.controls is not None and self.controls.durable

    @property
    def module_dir(self) -> str:
        """The folder of the workflow module, relative to the source root ("" for the root)."""
        return self._target.rpartition("/")[0]

    @property
    def module(self) -> str:
        """The name of the module that defines the workflow."""
        return self._target.rpartition("/")[2]

    @property
    def attr(self) -> str:
        """The name of the module attribute that holds the workflow instance."""
        return (self.import_path or "").partition(":")[2]

    @property
    def _target(self) -> str:
        """The import path without its attribute: ``dir/module``."""
        return (self.import_path or "").partition(":")[0]

    def to_dict(self) -> dict[str, Any]:
        """Return the service mapping in the YAML's spelling (the id is its key, not a field)."""
        document: dict[str, Any] = {
            "name": self.name,
            "source": None if self.source is None else self.source.to_dict(),
            "path": self.import_path,
            "host": self.host,
            "port": self.port,
            "env": dict(self.env),
            "env-files": list(self.env_files),
            "python-dependencies": list(self.python_dependencies),
            "ts-dependencies": dict(self.ts_dependencies),
            "celeriac": None if self.controls is None else self.controls.to_dict(),
        }
        return _without_nones(document)


@dataclass(frozen=True)
class ControlPlaneSpec:
    """The ``control-plane`` section, with LlamaDeploy's defaults."""

    services_store_key: str = "services"
    tasks_store_key: str = "tasks"
    session_store_key: str = "sessions"
    step_interval: float = 0.1
    host: str = "127.0.0.1"
    port: int = 8000
    internal_host: str | None = None
    internal_port: int | None = None
    running: bool = True
    cors_origins: tuple[str, ...] | None = None
    topic_namespace: str = "llama_deploy"
    state_store_uri: str | None = None
    use_tls: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return the ``control-plane`` mapping."""
        document = dataclasses.asdict(self)
        if self.cors_origins is not None:
            document["cors_origins"] = list(self.cors_origins)
        return _without_nones(document)


@dataclass(frozen=True)
class MessageQueueSpec:
    """The ``message-queue`` section: its type and every option of that type, defaults filled."""

    type: str
    options: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Return the ``message-queue`` mapping."""
        return _without_nones({"type": self.type, **self.options})


@dataclass(frozen=True)
class DeploymentSpec:
    """A validated deployment: its services and the settings LlamaDeploy's YAML carries."""

    name: str
    control_plane: ControlPlaneSpec
    message_queue: MessageQueueSpec
    default_service: str | None
    services: dict[str, ServiceSpec]
    ui: ServiceSpec | None = None

    @property
    def warnings(self) -> list[str]:
        """What the file holds that is accepted but does nothing (LlamaDeploy only warned)."""
        found = []
        if self.default_service is not None and self.default_service not in self.services:
            found.append(
                f"default-service {self.default_service!r} is not a service of this deployment "
                f"(services: {', '.join(self.services)}); tasks must name their service_id"
            )
        if self.ui is not None:
            found.append("ui is accepted and not served: Celeriac runs no UI of a deployment")
        return found

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe mapping in the YAML's spelling, which ``load_deployment_mapping``
        reads back."""
        document: dict[str, Any] = {
            "name": self.name,
            "control-plane": self.control_plane.to_dict(),
            "message-queue": self.message_queue.to_dict(),
            "default-service": self.default_service,
            "services": {key: service.to_dict() for key, service in self.services.items()},
            "ui": None if self.ui is None else self.ui.to_dict(),
        }
        return _without_nones(document)


def split_git_location(location: str) -> tuple[str, str | None]:
    """Split ``url@ref`` on the last ``@`` of the repository path."""
    # The host part can hold an "@" of its own ("git@host:", "https://user@host/"), so only an
    # "@" after it can start a ref.
    at = location.rfind("@", _repository_path_start(location))
    if at == -1:
        return location, None
    return location[:at], location[at + 1 :]


def _repository_path_start(location: str) -> int:
    """Index where the repository path of a clone URL starts (after any user and host)."""
    scheme_end = location.find("://")
    if scheme_end != -1:
        slash = location.find("/", scheme_end + 3)
        return len(location) if slash == -1 else slash
    # scp-like "user@host:path": the host part ends at the first ":" (or "/" if none).
    ends = [index for index in (location.find(":"), location.find("/")) if index != -1]
    return min(ends) if ends else 0


def _without_nones(document: dict[str, Any]) -> dict[str, Any]:
    """Drop unset optional fields: a missing key loads back to the same default."""
    return {key: value for key, value in document.items() if value is not None}
