"""Start real Celery workers: inside this process (embedded mode, tests) or as the main loop."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery.worker import WorkController

from config.settings import Settings
from workers.catalog import http_fetcher, http_version_fetcher
from workers.celery_app import CeleriacCelery, create_celery
from workers.errors import UnknownDeployment, WorkflowLoadError
from workers.loader import missing_dependencies
from workers.protocol import service_queue
from workers.versions import DeploymentSource, FetchVersion


class _Controller(WorkController):
    """A WorkController that tells when its consumer is ready."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.ready = threading.Event()
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer: Any) -> None:
        self.ready.set()


class ThreadWorker:
    """A real Celery worker consuming some queues from a thread of this process.

    This is what the embedded mode runs for the control plane and for each deployment: the same
    consumer, acknowledgements and task code as ``celery worker``, with a thread pool instead of
    processes because the ``memory://`` broker only exists inside this process.
    """

    def __init__(
        self,
        celery: CeleriacCelery,
        queues: Sequence[str],
        *,
        name: str,
        concurrency: int = 4,
        pool: str = "threads",
    ) -> None:
        self.celery = celery
        self.queues = list(queues)
        self.name = name
        self.concurrency = concurrency
        self.pool = pool
        self._controller: _Controller | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start consuming and return once the consumer is ready."""
        self.celery.finalize()
        # The thread pool traces tasks through Celery's default app, so it must be ours.
        self.celery.set_default()
        self.celery.set_current()
        controller = _Controller(
            app=self.celery,
            hostname=f"{self.name}@embedded",
            pool=self.pool,
            concurrency=self.concurrency,
            queues=self.queues,
            loglevel=self.celery.settings.log_level,
            ready_callback=None,
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
        )
        thread = threading.Thread(target=controller.start, name=f"worker-{self.name}", daemon=True)
        thread.start()
        if not controller.ready.wait(timeout):
            raise RuntimeError(f"worker {self.name} did not start within {timeout} s")
        self._controller, self._thread = controller, thread

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the tasks in hand (warm shutdown) and stop consuming."""
        controller, thread = self._controller, self._thread
        self._controller = self._thread = None
        if controller is None or thread is None:
            return
        controller.stop(in_sighandler=False)
        thread.join(timeout)


def run_worker(
    celery: CeleriacCelery,
    queues: Sequence[str],
    *,
    hostname: str,
    concurrency: int,
    pool: str = "threads",
    loglevel: str = "INFO",
) -> int:
    """Run a Celery worker in this process until it is stopped; returns its exit code.

    This is ``celery worker`` itself (banner, signal handling, warm shutdown on SIGTERM), so a
    Celeriac worker behaves as Celery users expect.
    """
    celery.set_default()
    worker = celery.Worker(
        hostname=hostname,
        queues=list(queues),
        concurrency=concurrency,
        pool_cls=pool,
        loglevel=loglevel,
    )
    worker.start()
    return int(worker.exitcode or 0)


def prepare_service_worker(
    settings: Settings,
    deployments: Sequence[str],
    services: Sequence[str] = (),
    *,
    base_path: Path | None = None,
    hostname: str,
    install_dependencies: bool = False,
) -> tuple[CeleriacCelery, list[str]]:
    """Fetch the deployments from the control plane and get a worker ready to serve them.

    Returns the Celery app and the queues to consume. Nothing is installed silently: missing
    ``python-dependencies`` stop the worker with their names unless ``install_dependencies``.
    """
    fetch = http_fetcher(settings.server, base_path, token=settings.token)
    # The operator named ``base_path`` on the command line: sources there are theirs.
    roots = () if base_path is None else (base_path,)
    fetch_version = http_version_fetcher(settings.server, base_path, token=settings.token)
    celery = create_celery(
        settings,
        worker_name=hostname,
        fetch=fetch,
        fetch_version=fetch_version,
        source_roots=roots,
    )
    queues: list[str] = []
    for name in deployments:
        source = fetch(name)
        chosen = list(services) or list(source.spec.services)
        unknown = [s for s in chosen if s not in source.spec.services]
        if unknown:
            raise UnknownDeployment(
                f"deployment {name!r} has no service {', '.join(unknown)} "
                f"(services: {', '.join(source.spec.services)})"
            )
        requirements = sorted(
            {r for s in chosen for r in source.spec.services[s].python_dependencies}
        )
        _ensure_dependencies(requirements, install_dependencies)
        celery.runtime.install(source.spec, source.base_path, source.version)
        queues += [service_queue(name, s) for s in chosen]
        queues += [q for q in _kept_queues(fetch_version, source, services) if q not in queues]
    return celery, queues


def _kept_queues(
    fetch_version: FetchVersion, source: DeploymentSource, services: Sequence[str]
) -> list[str]:
    """The queues of the services of the deployment's kept earlier versions (those named in
    ``services``, if any): a durable task parked on a service a reload renamed or removed
    resumes from its old queue, which this worker then consumes too."""
    name = source.spec.name
    queues: list[str] = []
    for number in source.kept:
        try:
            earlier = fetch_version(name, number)
        except UnknownDeployment:
            continue  # dropped since: no task needs it
        queues += [
            service_queue(name, s) for s in earlier.spec.services if not services or s in services
        ]
    return queues


def _ensure_dependencies(requirements: list[str], install: bool) -> None:
    """Install requirements when asked to; otherwise refuse to start if any is missing."""
    missing = missing_dependencies(tuple(requirements))
    if not missing:
        return
    if not install:
        raise WorkflowLoadError(
            "missing python dependencies: "
            + ", ".join(missing)
            + "; install them, or start the worker with --install-dependencies"
        )
    done = subprocess.run([sys.executable, "-m", "pip", "install", *requirements], check=False)
    if done.returncode != 0:
        raise WorkflowLoadError(f"pip install {' '.join(requirements)} failed")
