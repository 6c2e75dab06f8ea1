"""A bare Celery app: raw Celery's side of the distributed benchmark.

Three tasks: ``echo`` answers as the quick start does, with no workflow around it (the baseline
the speed goal is measured against); ``workflow`` runs the quick start's own workflow, as a
team that runs workflows on Celery by hand would, on an event loop per worker thread; ``steps``
runs the durable benchmark's three-step workflow (``tests/benchmarks/steps``) the same way.

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

import asyncio
import importlib.util
import json
import os
import threading
from functools import cache
from pathlib import Path
from typing import Any

from celery import Celery

from tests.benchmarks.bench import QUICKSTART

QUEUE = "celeriac_bench_raw"
ECHO = "raw_bench.echo"
WORKFLOW = "raw_bench.workflow"
STEPS = "raw_bench.steps"
QUICKSTART_WORKFLOW = QUICKSTART / "src" / "workflow.py"
STEPS_WORKFLOW = Path(__file__).resolve().parent / "steps" / "src" / "workflow.py"


def create_app(broker: str, backend: str, transport_options: dict[str, Any]) -> Celery:
    """A Celery app on ``broker``, with results in ``backend`` and its tasks registered."""
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

    @app.task(name=WORKFLOW, shared=False)
    def workflow(message: str) -> str:
        """The quick start's workflow, run in this worker thread's event loop."""
        return str(
            _thread_loop().run_until_complete(_run(QUICKSTART_WORKFLOW, "echo_workflow", message))
        )

    @app.task(name=STEPS, shared=False)
    def steps(message: str) -> str:
        """The three-step workflow, run in this worker thread's event loop."""
        return str(_thread_loop().run_until_complete(_run(STEPS_WORKFLOW, "three_steps", message)))

    return app


@cache
def _workflow(path: Path, name: str) -> Any:
    """The workflow object ``name`` of the file ``path``, imported once."""
    spec = importlib.util.spec_from_file_location(f"raw_bench_{path.parent.parent.name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


_LOOPS = threading.local()


def _thread_loop() -> asyncio.AbstractEventLoop:
    """This thread's event loop, made on first use and kept (a new loop per task costs)."""
    loop = getattr(_LOOPS, "loop", None)
    if loop is None:
        loop = _LOOPS.loop = asyncio.new_event_loop()
    return loop


async def _run(path: Path, name: str, message: str) -> Any:
    return await _workflow(path, name).run(message=message)


def __getattr__(name: str) -> Any:
    """``app`` for ``celery -A``, built from the environment on first use."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    options = json.loads(os.environ.get("RAW_BENCH_TRANSPORT_OPTIONS", "{}"))
    app = create_app(os.environ["RAW_BENCH_BROKER"], os.environ["RAW_BENCH_BACKEND"], options)
    app.set_default()
    globals()["app"] = app
    return app
