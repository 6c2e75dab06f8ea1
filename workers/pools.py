"""The Celery pool Celeriac's workers run with: threads, whichever command line starts them.

Both kinds of worker keep state in their own process that the tasks must reach. A service
worker's inbox hands events to the runs of its process, from the consumer's thread: a forked
child (``prefork``) is out of its reach, and so is a run in the consumer's own thread
(``solo``), which keeps the consumer busy until the run ends; a run waiting for a human would
wait until its timeout. The control plane's database connections must not cross a fork
either, but it may record in the consumer's thread (``solo``, as the embedded mode does).
Green pools (``eventlet``, ``gevent``) patch the threads the workflows' event loop runs in.

Celeriac's app makes ``threads`` the default, so this only stops a worker started with
another ``-P``: at once, saying why, rather than with tasks that would hang.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps
from celery.concurrency.solo import TaskPool as SoloPool
from celery.concurrency.thread import TaskPool as ThreadsPool
from celery.exceptions import ImproperlyConfigured

from workers.protocol import SERVICE_QUEUE_PREFIX


class ThreadsPoolOnly(bootsteps.Step):
    """Refuses to build a worker whose pool cannot run Celeriac's tasks."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        pool = worker.pool_cls
        if _is(pool, ThreadsPool) or (_is(pool, SoloPool) and not _serves_services(worker)):
            return
        name = getattr(pool, "__module__", str(pool)).rsplit(".", 1)[-1]
        raise ImproperlyConfigured(
            f"Celeriac workers run with the threads pool (-P threads, the default of its app), "
            f"not {name!r}: events sent into a task must reach the process and the thread "
            f"that run it. Use more threads (-c) or more worker processes instead."
        )


def _is(pool: Any, kind: type) -> bool:
    return isinstance(pool, type) and issubclass(pool, kind)


def _serves_services(worker: Any) -> bool:
    """Whether the worker consumes a service queue (``-Q``, else every queue the app knows)."""
    queues = worker.app.amqp.queues
    names = queues.consume_from or queues
    return any(name.startswith(SERVICE_QUEUE_PREFIX) for name in names)
