"""End to end: the distributed mode on RabbitMQ, Redis and SQS, with PostgreSQL as the state."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import QUICKSTART
from tests.e2e.conftest import Platform, node

#: Tasks sent in one batch.
BATCH = 60


@pytest.mark.e2e
def test_two_service_workers_share_a_batch_and_each_task_runs_once(
    transport: str, broker_url: str, make_platform: Callable[[str], Platform]
) -> None:
    """API server, control plane and two service workers run a batch: every task once."""
    # Given an API server, a control-plane consumer (Celery's own command line on Redis) and
    # two service workers, one from `celeriac worker`, one from a plain `celery worker`
    platform = make_platform(broker_url)
    platform.serve(QUICKSTART)
    platform.control_plane(celery_cli=transport == "redis")
    platform.service_worker("w1")
    platform.service_worker("w2", celery_cli=True)
    workers = {node("w1"), node("w2")}
    live = platform.wait_for_workers("QuickStart", workers)
    assert live == workers

    # When a batch of tasks is queued
    ids = platform.submit("QuickStart", [{"message": f"m{i}"} for i in range(BATCH)])
    assert len(set(ids)) == BATCH
    tasks = platform.wait_for_tasks("QuickStart", ids)

    # Then every task succeeded with its own result, on its first attempt
    failed = {i: t for i, t in tasks.items() if t["status"] != "succeeded"}
    assert not failed, failed
    assert [tasks[i]["result"] for i in ids] == [f"Message received: m{n}" for n in range(BATCH)]
    attempts = {i: t["attempts"] for i, t in tasks.items() if t["attempts"] != 1}
    assert not attempts, f"tasks not run exactly once: {attempts}"
    # And both workers ran some of them
    by_worker = platform.workers_by_task(ids)
    assert set(by_worker) == workers, by_worker
    assert all(count > 0 for count in by_worker.values()), by_worker
    assert sum(by_worker.values()) == BATCH
    # And each task has exactly one stored StopEvent
    assert platform.stop_events(ids) == dict.fromkeys(ids, 1)
