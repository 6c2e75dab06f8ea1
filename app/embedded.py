"""The embedded mode: real Celery workers for the control plane and every deployment, in-process.

With the ``memory://`` broker nothing outside this process can consume, so the server runs the
same workers the distributed mode runs as separate processes: one for the ``control_plane``
queue and one per deployment for its service queues. They follow deployments as they are
created, reloaded and deleted. A reloaded deployment's worker also consumes the queues of the
services of its earlier versions kept for durable tasks (a service renamed by the reload among
them), and the runtime reads those versions straight from the control plane.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from app.control.plane import ControlPlane
from app.errors import NotFound
from config.deployment import DeploymentSpec, load_deployment_mapping
from workers.errors import UnknownDeployment
from workers.launch import ThreadWorker
from workers.protocol import CONTROL_QUEUE
from workers.versions import DeploymentSource

log = logging.getLogger(__name__)


class EmbeddedWorkers:
    """Starts and stops in-process workers as deployments come and go."""

    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane
        self._celery = plane.celery
        self._concurrency = plane.settings.worker_concurrency
        self._control: ThreadWorker | None = None
        self._services: dict[str, ThreadWorker] = {}
        self._retiring: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the control-plane worker and one worker per stored deployment."""
        # Recording is short and SQLite takes one writer at a time: the consumer thread
        # records each report itself (solo pool) instead of handing it to another thread.
        self._control = ThreadWorker(
            self._celery, [CONTROL_QUEUE], name="control-plane", concurrency=1, pool="solo"
        )
        self._control.start()
        self._celery.runtime.versions.fetch_version = self._version
        for spec, base_path, version in self._plane.deployments.specs():
            self.deployed(spec, base_path, version)
        self._plane.deployments.on_deployed.append(self.deployed)
        self._plane.deployments.on_removed.append(self.removed)

    def deployed(self, spec: DeploymentSpec, base_path: Path, version: int = 1) -> None:
        """Serve a new or reloaded deployment (and its kept versions' services)."""
        queues = self._celery.runtime.install(spec, base_path, version)
        queues += [q for q in self._plane.versions.kept_queues(spec.name) if q not in queues]
        with self._lock:
            old = self._services.get(spec.name)
            if old is not None and sorted(old.queues) == sorted(queues):
                return  # same queues: the runtime already serves the new spec
            worker = ThreadWorker(
                self._celery, queues, name=f"deployment-{spec.name}", concurrency=self._concurrency
            )
            worker.start()
            self._services[spec.name] = worker
        if old is not None:
            self._retire(old)

    def _version(self, name: str, version: int) -> DeploymentSource:
        """A kept version of a deployment, read in this process (see ``app.control.versions``)."""
        try:
            found = self._plane.versions.get(name, version)
        except NotFound as exc:
            raise UnknownDeployment(str(exc)) from exc
        return DeploymentSource(load_deployment_mapping(found.spec), Path(found.base_path), version)

    def removed(self, name: str) -> None:
        """Stop serving a deleted deployment."""
        with self._lock:
            worker = self._services.pop(name, None)
        self._celery.runtime.remove(name)
        if worker is not None:
            self._retire(worker)

    def _retire(self, worker: ThreadWorker) -> None:
        """Let a replaced worker finish what it holds without blocking the request."""
        thread = threading.Thread(target=worker.stop, name=f"retire-{worker.name}", daemon=True)
        thread.start()
        with self._lock:
            self._retiring.append(thread)

    def stop(self) -> None:
        """Stop every in-process worker."""
        with self._lock:
            workers = list(self._services.values())
            retiring = list(self._retiring)
            self._services.clear()
            self._retiring.clear()
        for worker in workers:
            worker.stop()
        for thread in retiring:
            thread.join()
        if self._control is not None:
            self._control.stop()
            self._control = None
        self._celery.runtime.close()
