"""Celeriac's workers run with Celery's threads pool, and refuse to start with another."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from celery.exceptions import ImproperlyConfigured
from celery.worker import WorkController

from config.settings import Settings
from tests.conftest import REPO
from workers.celery_app import create_celery


@pytest.mark.parametrize("pool", ["processes", "prefork", "solo"])
def test_a_worker_with_another_pool_is_refused_with_the_reason(pool: str) -> None:
    # Given Celeriac's Celery app
    celery = create_celery(Settings())
    # When a worker of it is built with a pool other than threads
    with pytest.raises(ImproperlyConfigured) as refused:
        WorkController(app=celery, pool_cls=pool, queues=["celeriac.QuickStart.echo_workflow"])
    # Then it is refused, naming the pool and what to use
    message = str(refused.value)
    assert "threads pool (-P threads" in message
    assert repr("solo" if pool == "solo" else "prefork") in message


def test_the_control_plane_may_record_in_the_consumer_thread() -> None:
    # Given Celeriac's Celery app
    celery = create_celery(Settings())
    # When a worker of the control queue alone is built with the solo pool, it is accepted
    worker = WorkController(app=celery, pool_cls="solo", queues=["control_plane"])
    assert worker.pool_cls.__module__ == "celery.concurrency.solo"
    # But not one that also serves a service
    with pytest.raises(ImproperlyConfigured):
        WorkController(app=celery, pool_cls="solo", queues=["control_plane", "celeriac.Q.s"])


def test_the_threads_pool_is_the_default_and_accepted() -> None:
    # Given Celeriac's Celery app
    celery = create_celery(Settings())
    # When a worker is built without naming a pool, and with threads named
    default = WorkController(app=celery, queues=["celeriac.QuickStart.echo_workflow"])
    named = WorkController(app=celery, pool_cls="threads", queues=["celeriac.QuickStart.echo"])
    # Then both run the threads pool
    assert default.pool_cls.__module__ == "celery.concurrency.thread"
    assert named.pool_cls.__module__ == "celery.concurrency.thread"


def test_celery_command_line_with_a_process_pool_exits_with_the_reason(tmp_path: Path) -> None:
    # Given the plain Celery command line of a service worker, asked for a process pool
    celery = Path(sys.executable).parent / "celery"
    argv = [str(celery), "-A", "workers.entry", "worker", "-P", "processes"]
    argv += ["-Q", "celeriac.QuickStart.echo_workflow", "-l", "WARNING"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
    env["CELERIAC_DATA_DIR"] = str(tmp_path)
    # When it starts
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    # Then it stops at once, non-zero, saying why
    assert done.returncode != 0
    assert "Celeriac workers run with the threads pool" in done.stderr
    assert "ready." not in done.stderr
