"""Worker heartbeats: every worker of a Celeriac app tells the control plane it is alive.

A Celery bootstep, so that it runs in ``celeriac worker``, in plain ``celery worker`` and in the
embedded workers alike. Each beat lists the tasks the process runs, which renews their leases
(``app.control.leases``). It beats from a small thread of its own (Celery's timer thread can
take a second to stop), and says goodbye on a warm shutdown so the registry drops the worker
at once; a killed worker drops out after three silent intervals.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

from celery import bootsteps

from workers.protocol import CONTROL_QUEUE, HEARTBEAT, Heartbeat


class HeartbeatStep(bootsteps.StartStopStep):
    """Sends a :class:`Heartbeat` every ``heartbeat_interval`` seconds."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.time()

    def start(self, worker: Any) -> None:
        """Beat now, then every interval until stopped."""
        # Reports name the worker that ran a task; unless the process named its runtime
        # (the embedded server does), that is the Celery node name, known only now.
        if worker.app.runtime.worker_name is None:
            worker.app.runtime.worker_name = worker.hostname
        interval = worker.app.settings.heartbeat_interval

        def beat_until_stopped() -> None:
            # The first beat waits for the consumer: its queues are this worker's own.
            deadline = time.monotonic() + interval
            while own_queues(worker) is None and time.monotonic() < deadline:
                if self._stop.wait(0.05):
                    return
            self._beat(worker)
            while not self._stop.wait(interval):
                self._beat(worker)

        self._thread = threading.Thread(
            target=beat_until_stopped, name=f"heartbeat-{worker.hostname}", daemon=True
        )
        self._thread.start()

    def stop(self, worker: Any) -> None:
        """Stop beating and say goodbye."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._thread = None
        self._beat(worker, gone=True)

    def _beat(self, worker: Any, gone: bool = False) -> None:
        app = worker.app
        # Not ``app.amqp.queues``: workers of one app in one process (the embedded mode)
        # share it, and each start rewrites it.
        queues = own_queues(worker) or []
        # The time first, then the tasks: a task whose run started before ``at`` is listed
        # unless its outcome was already sent (``ServiceRuntime.run``).
        at = time.time()
        message = Heartbeat(
            worker=worker.hostname,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=queues,
            deployments=app.runtime.served(),
            started_at=self._started,
            at=at,
            gone=gone,
            tasks=app.runtime.held(),
        )
        try:
            app.send_task(
                HEARTBEAT,
                kwargs=message.encode(),
                queue=CONTROL_QUEUE,
                task_id=message.id,
                argsrepr="()",
                kwargsrepr=f"worker={message.worker!r}, gone={gone}",
            )
        except Exception:
            app.log.get_default_logger().warning("heartbeat not sent", exc_info=True)


def own_queues(worker: Any) -> list[str] | None:
    """The queues this worker's consumer consumes, once it has started."""
    task_consumer = getattr(getattr(worker, "consumer", None), "task_consumer", None)
    if task_consumer is None:
        return None
    return sorted(q.name for q in task_consumer.queues)
