"""Start real Celery workers: inside this process (embedded mode, tests) or as the main loop."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from celery.worker import WorkController

from workers.celery_app import CeleriacCelery


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
