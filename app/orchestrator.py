"""The orchestrator's Celery tasks: record what service workers report, on ``control_plane``.

They are thin adapters around the recorder, which also decides the next messages (the next
task of a session, events waiting for a worker); routing a new task is a plain function
(``app.control.routing``) run when the task is submitted, so mistakes are answered at once.
Control tasks retry on database outages instead of dropping a report. A control-plane
consumer also sweeps: it sends again the steps of tasks whose sender died before the broker
took them (the outbox), and of tasks that no live worker holds any more (their leases).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, bootsteps
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from app.control.deadlines import Deadlines
from app.control.descriptions import Descriptions
from app.control.journal import Journal
from app.control.leases import Leases
from app.control.outbox import Outbox
from app.control.recorder import Recorder
from app.control.stops import Stops
from workers.heartbeat import own_queues
from workers.protocol import (
    CONTROL_QUEUE,
    HEARTBEAT,
    JOURNAL_WANTED,
    JOURNAL_WRITTEN,
    SERVICE_DESCRIBED,
    STEP_EVENT,
    STEP_FINISHED,
    STEP_STARTED,
    STOPS_WANTED,
    Heartbeat,
    JournalWanted,
    JournalWritten,
    ServiceDescribed,
    StepEvent,
    StepFinished,
    StepStarted,
    StopsWanted,
)

log = logging.getLogger(__name__)

#: The longest wait, in seconds, between two tries of a report that the database failed: once
#: the database is back, every report waiting is recorded within it.
RETRY_BACKOFF_MAX = 30

_RETRY: dict[str, Any] = {
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": True,
    "retry_backoff_max": RETRY_BACKOFF_MAX,
    "max_retries": 200,
    "shared": False,
    # Reports are plumbing, several per task (one per streamed event, one per heartbeat):
    # no monitoring events, so Flower lists the runs (``run_step``) a user cares about.
    "send_events": False,
}


def register_control_tasks(
    celery: Celery,
    recorder: Recorder,
    outbox: Outbox,
    leases: Leases,
    descriptions: Descriptions,
    stops: Stops,
    deadlines: Deadlines,
    journal: Journal,
) -> None:
    """Register the control-plane tasks that record reports from service workers, and the
    sweeps (of the outbox and the leases, and of the deadlines) in the workers that consume
    the control queue."""
    if outbox.swept:
        celery.steps["worker"].add(_sweep_step(outbox, leases))
    celery.steps["worker"].add(_deadlines_step(deadlines))

    @celery.task(name=STEP_STARTED, **_RETRY)
    def step_started(**payload: Any) -> None:
        recorder.started(StepStarted.decode(payload))

    @celery.task(name=STEP_EVENT, **_RETRY)
    def step_event(**payload: Any) -> None:
        recorder.event(StepEvent.decode(payload))

    @celery.task(name=STEP_FINISHED, **_RETRY)
    def step_finished(**payload: Any) -> None:
        recorder.finished(StepFinished.decode(payload))

    @celery.task(name=HEARTBEAT, **_RETRY)
    def heartbeat(**payload: Any) -> None:
        try:
            recorder.heartbeat(Heartbeat.decode(payload))
        except (OperationalError, InterfaceError):
            # Retried later, behind its worker's next heartbeats: until every worker has
            # been heard again, none may be taken for silent.
            leases.missed()
            raise

    @celery.task(name=SERVICE_DESCRIBED, **_RETRY)
    def service_described(**payload: Any) -> None:
        descriptions.record(ServiceDescribed.decode(payload))

    @celery.task(name=STOPS_WANTED, **_RETRY)
    def stops_wanted(**payload: Any) -> None:
        stops.answer(StopsWanted.decode(payload))

    @celery.task(name=JOURNAL_WRITTEN, **_RETRY)
    def journal_written(**payload: Any) -> None:
        journal.record(JournalWritten.decode(payload))

    @celery.task(name=JOURNAL_WANTED, **_RETRY)
    def journal_wanted(**payload: Any) -> None:
        journal.answer(JournalWanted.decode(payload))


def sweep_period(outbox: Outbox, leases: Leases) -> float:
    """Seconds between two sweeps: a third of ``redispatch_after``, at most one heartbeat
    interval (the leases' bound counts one period)."""
    return max(min(outbox.redispatch_after / 3, leases.heartbeat_interval), 0.05)


class _ControlSweep(bootsteps.StartStopStep):
    """A worker bootstep that sweeps from a thread of its own while the worker consumes the
    control queue (service workers of the embedded mode share the app, and do not sweep):
    once at start, then after each :meth:`pause`."""

    #: The sweeping thread's name, before the worker's node name.
    thread_name = "sweep"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self) -> None:
        """One sweep; a database error is logged, and the next sweep tries again."""
        raise NotImplementedError

    def pause(self, stop: threading.Event) -> bool:
        """Wait until the next sweep; True once ``stop`` is set."""
        raise NotImplementedError

    def start(self, worker: Any) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._sweep_until_stopped,
            args=(worker,),
            name=f"{self.thread_name}-{worker.hostname}",
            daemon=True,
        )
        self._thread.start()

    def stop(self, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _sweep_until_stopped(self, worker: Any) -> None:
        # The worker's queues are known once its consumer runs.
        while (queues := own_queues(worker)) is None:
            if self._stop.wait(0.05):
                return
        if CONTROL_QUEUE not in queues:
            return
        while True:
            self.sweep()
            if self.pause(self._stop):
                return


def _sweep_step(outbox: Outbox, leases: Leases) -> type[bootsteps.StartStopStep]:
    """A worker bootstep that sweeps ``outbox`` and ``leases`` while the worker consumes the
    control queue."""
    interval = sweep_period(outbox, leases)

    class SweepStep(_ControlSweep):
        """Sweeps at start, then every :func:`sweep_period`; writes the outbox's notes when
        the worker stops."""

        def sweep(self) -> None:
            try:
                outbox.sweep()
            except SQLAlchemyError:
                log.warning("the outbox sweep failed; trying again", exc_info=True)
            try:
                leases.recover()
            except SQLAlchemyError:
                log.warning("the leases' sweep failed; trying again", exc_info=True)

        def pause(self, stop: threading.Event) -> bool:
            return stop.wait(interval)

        def stop(self, worker: Any) -> None:
            super().stop(worker)
            # The consumer has stopped: note the last steps it sent (the next task of a
            # session) before the process ends, or a sweep would send them again.
            outbox.close()

    return SweepStep


def _deadlines_step(deadlines: Deadlines) -> type[bootsteps.StartStopStep]:
    """A worker bootstep that keeps ``deadlines`` while the worker consumes the control
    queue (the embedded server's too: retries and time limits need no broker sweep)."""

    class DeadlinesStep(_ControlSweep):
        """Sweeps the deadlines at start, then as :meth:`Deadlines.wait` says."""

        thread_name = "deadlines"

        def sweep(self) -> None:
            try:
                deadlines.sweep()
            except SQLAlchemyError:
                log.warning("the deadlines' sweep failed; trying again", exc_info=True)

        def pause(self, stop: threading.Event) -> bool:
            return deadlines.wait(stop)

        def stop(self, worker: Any) -> None:
            self._stop.set()
            deadlines.interrupt()
            super().stop(worker)

    return DeadlinesStep
