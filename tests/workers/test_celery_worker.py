"""Tests of the Celery app with real in-process workers on the memory:// broker."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.deployment import load_deployment_file
from config.settings import Settings
from tests.conftest import QUICKSTART
from workers.celery_app import CeleriacCelery, create_celery, send
from workers.launch import ThreadWorker
from workers.protocol import (
    CONTROL_QUEUE,
    RUN_STEP,
    STEP_FINISHED,
    RunStep,
    StepFinished,
    service_queue,
)


class Outcomes:
    """What the recording control-plane task received, with a way to wait for it."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        self._arrived = threading.Condition()

    def add(self, payload: dict[str, Any]) -> None:
        """Record one StepFinished payload."""
        with self._arrived:
            self.payloads.append(payload)
            self._arrived.notify_all()

    def wait_for(self, count: int, timeout: float) -> list[StepFinished]:
        """The first ``count`` outcomes, waiting at most ``timeout`` seconds for them."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.payloads) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.wait(remaining)
            return [StepFinished.decode(p) for p in self.payloads]


@pytest.fixture
def celery(tmp_path: Path, memory_broker: None) -> Iterator[CeleriacCelery]:
    """An embedded Celery app serving the quick start from its service runtime."""
    app = create_celery(Settings(data_dir=tmp_path / ".celeriac"), worker_name="svc-worker")
    app.runtime.install(load_deployment_file(QUICKSTART), QUICKSTART.parent)
    try:
        yield app
    finally:
        app.runtime.close()


@pytest.fixture
def outcomes(celery: CeleriacCelery) -> Outcomes:
    """A stand-in for the control plane's STEP_FINISHED task, registered on this app only."""
    recorded = Outcomes()

    @celery.task(name=STEP_FINISHED, shared=False)
    def record_finished(**payload: Any) -> None:
        recorded.add(payload)

    return recorded


@pytest.fixture
def running_workers(celery: CeleriacCelery, outcomes: Outcomes) -> Iterator[list[ThreadWorker]]:
    """A service worker on the quick start's queue and a control-plane worker, both started."""
    started: list[ThreadWorker] = []
    try:
        for name, queue in (
            ("service", service_queue("QuickStart", "echo_workflow")),
            ("control", CONTROL_QUEUE),
        ):
            worker = ThreadWorker(celery, [queue], name=f"{name}-{uuid.uuid4().hex[:6]}")
            worker.start(timeout=10)
            started.append(worker)
        yield started
    finally:
        for worker in started:
            worker.stop(timeout=5)


def test_real_worker_runs_a_step_and_reports_to_the_control_queue(
    celery: CeleriacCelery, outcomes: Outcomes, running_workers: list[ThreadWorker]
) -> None:
    # Given a service worker and a control-plane worker consuming their queues
    step = RunStep(
        task_id=uuid.uuid4().hex,
        session_id=uuid.uuid4().hex,
        deployment="QuickStart",
        service="echo_workflow",
        input={"message": "over the broker"},
    )
    # When the step is published the way the control plane does
    send(celery, RUN_STEP, step, service_queue("QuickStart", "echo_workflow"))
    # Then the service worker ran it and its outcome reached the control-plane worker
    finished = outcomes.wait_for(1, timeout=10)
    assert len(finished) == 1
    outcome = finished[0]
    assert outcome.task_id == step.task_id
    assert outcome.ok is True, outcome.error
    assert outcome.result == "Message received: over the broker"
    assert outcome.worker == "svc-worker"
    assert outcome.event_count == 1


def test_failed_step_is_reported_as_an_outcome_too(
    celery: CeleriacCelery, outcomes: Outcomes, running_workers: list[ThreadWorker]
) -> None:
    # Given a step for a service this worker's runtime does not serve, on a served queue
    step = RunStep(
        task_id=uuid.uuid4().hex,
        session_id=uuid.uuid4().hex,
        deployment="QuickStart",
        service="ghost",
        input={},
    )
    # When it is published on the quick start's queue
    send(celery, RUN_STEP, step, service_queue("QuickStart", "echo_workflow"))
    # Then the control plane still hears the outcome, an error
    finished = outcomes.wait_for(1, timeout=10)
    assert [f.task_id for f in finished] == [step.task_id]
    assert finished[0].ok is False
    assert finished[0].error is not None
    assert "ghost" in finished[0].error["message"]


def test_several_steps_each_get_one_outcome(
    celery: CeleriacCelery, outcomes: Outcomes, running_workers: list[ThreadWorker]
) -> None:
    steps = [
        RunStep(
            task_id=f"task-{n}",
            session_id="s",
            deployment="QuickStart",
            service="echo_workflow",
            input={"message": str(n)},
        )
        for n in range(5)
    ]
    for step in steps:
        send(celery, RUN_STEP, step, service_queue("QuickStart", "echo_workflow"))
    finished = outcomes.wait_for(5, timeout=10)
    assert sorted((f.task_id, f.result) for f in finished) == [
        (f"task-{n}", f"Message received: {n}") for n in range(5)
    ]


def test_stopping_workers_returns_within_a_second(
    celery: CeleriacCelery, outcomes: Outcomes
) -> None:
    # Given two started, idle workers
    service = ThreadWorker(celery, [service_queue("QuickStart", "echo_workflow")], name="stop-s")
    control = ThreadWorker(celery, [CONTROL_QUEUE], name="stop-c")
    service.start(timeout=10)
    control.start(timeout=10)
    threads = [service._thread, control._thread]
    # When they are stopped
    for worker in (service, control):
        start = time.monotonic()
        worker.stop(timeout=5)
        elapsed = time.monotonic() - start
        # Then each stop returns promptly
        assert elapsed < 1.0, f"{worker.name} took {elapsed:.2f} s to stop"
    # And their threads have ended
    assert all(thread is not None and not thread.is_alive() for thread in threads)


def test_stopping_a_worker_that_never_started_does_nothing(celery: CeleriacCelery) -> None:
    worker = ThreadWorker(celery, [CONTROL_QUEUE], name="never")
    start = time.monotonic()
    worker.stop(timeout=5)
    assert time.monotonic() - start < 0.1


def _echo_step(message: str) -> RunStep:
    return RunStep(
        task_id=uuid.uuid4().hex,
        session_id=uuid.uuid4().hex,
        deployment="QuickStart",
        service="echo_workflow",
        input={"message": message},
    )


def test_a_worker_stopped_and_started_again_runs_steps(
    celery: CeleriacCelery, outcomes: Outcomes, running_workers: list[ThreadWorker]
) -> None:
    # Given workers that were stopped and started again (as an embedded reload does)
    for worker in running_workers:
        worker.stop(timeout=5)
    for worker in running_workers:
        worker.start(timeout=10)
    # When a step is published
    step = _echo_step("after a restart")
    send(celery, RUN_STEP, step, service_queue("QuickStart", "echo_workflow"))
    # Then the restarted service worker runs it
    finished = outcomes.wait_for(1, timeout=10)
    assert [(f.task_id, f.result) for f in finished] == [
        (step.task_id, "Message received: after a restart")
    ]


def test_a_step_waiting_for_the_stopped_runs_goes_back_to_its_queue_as_the_worker_stops(
    celery: CeleriacCelery, outcomes: Outcomes
) -> None:
    # Given a service worker with no control plane to send it the list of stopped runs,
    # and a step it took and holds until that list comes
    queue = service_queue("QuickStart", "echo_workflow")
    service = ThreadWorker(celery, [queue], name="waits-s")
    service.start(timeout=10)
    step = _echo_step("kept")
    send(celery, RUN_STEP, step, queue)
    assert outcomes.wait_for(1, timeout=0.5) == []
    # When the worker stops
    thread = service._thread
    start = time.monotonic()
    service.stop(timeout=10)
    # Then it stops at once, not waiting for the list for ever
    assert time.monotonic() - start < 3
    assert thread is not None and not thread.is_alive()
    # And the step went back to its queue: started again with a control plane, it runs once
    again = ThreadWorker(celery, [queue], name="again-s")
    control = ThreadWorker(celery, [CONTROL_QUEUE], name="again-c")
    again.start(timeout=10)
    control.start(timeout=10)
    try:
        finished = outcomes.wait_for(1, timeout=10)
        assert [(f.task_id, f.result) for f in finished] == [
            (step.task_id, "Message received: kept")
        ]
    finally:
        again.stop(timeout=5)
        control.stop(timeout=5)
