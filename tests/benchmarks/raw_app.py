"""A bare Celery app with one echo task: raw Celery's side of the distributed benchmark.

    RAW_BENCH_BROKER=redis://... RAW_BENCH_BACKEND=redis://... \
        celery -A tests.benchmarks.raw_app worker -P threads -c 8 -Q celeriac_bench_raw

Celery's defaults (raw Celery as a user first meets it), but one message in hand per worker
thread as in Celeriac's workers, and the transport options the benchmark passes in
``RAW_BENCH_TRANSPORT_OPTIONS`` (JSON). The benchmark builds the same
app in its own process with :func:`create_app` to send tasks.
``app`` is built from the ``RAW_BENCH_*`` variables the first time it is asked for (which
``celery -A`` does), so importing this module reads nothing.
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery

QUEUE = "celeriac_bench_raw"
ECHO = "raw_bench.echo"


def create_app(broker: str, backend: str, transport_options: dict[str, Any]) -> Celery:
    """A Celery app on ``broker``, with results in ``backend`` and the echo task registered."""
    app = Celery("raw_bench", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options,
        task_default_queue=QUEUE,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
    )

    @app.task(name=ECHO, shared=False)
    def echo(message: str) -> str:
        """The quick start's echo, without the workflow around it."""
        return f"Message received: {message}"

    return app


def __getattr__(name: str) -> Any:
    """``app`` for ``celery -A``, built from the environment on first use."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    options = json.loads(os.environ.get("RAW_BENCH_TRANSPORT_OPTIONS", "{}"))
    app = create_app(os.environ["RAW_BENCH_BROKER"], os.environ["RAW_BENCH_BACKEND"], options)
    app.set_default()
    globals()["app"] = app
    return app
