"""Send work to service queues; the only place the control plane publishes."""

from __future__ import annotations

from celery import Celery
from kombu.exceptions import OperationalError

from app.errors import Unavailable
from workers.celery_app import broadcast_stops, send, send_to_inbox
from workers.protocol import (
    DESCRIBE,
    RUN_STEP,
    DeliverEvent,
    Describe,
    JournalReplay,
    RunStep,
    StopRuns,
    service_queue,
)


class Dispatcher:
    """Publishes run-step messages to the queue of the service that must run them."""

    def __init__(self, celery: Celery) -> None:
        self._celery = celery

    def run_step(self, step: RunStep) -> None:
        """Queue one step; raises :class:`Unavailable` if the broker cannot take it."""
        try:
            send(self._celery, RUN_STEP, step, service_queue(step.deployment, step.service))
        except (OperationalError, OSError) as exc:
            raise Unavailable(f"the broker did not accept the task: {exc}") from exc

    def stop(self, message: StopRuns) -> None:
        """Tell every service worker to stop these runs (never start them, stop them if
        they run); the runs are recorded as stopped before, so a worker that misses this
        reads them when it connects."""
        try:
            broadcast_stops(self._celery, message)
        except (OperationalError, OSError) as exc:
            raise Unavailable(f"the broker did not accept the stop: {exc}") from exc

    def deliver(self, inbox: str, message: DeliverEvent | StopRuns | JournalReplay) -> None:
        """Send a message to one worker's inbox: an event for the task it runs, the
        stopped runs it asked for, or the journal a durable run resumes from."""
        try:
            send_to_inbox(self._celery, inbox, message)
        except (OperationalError, OSError) as exc:
            raise Unavailable(f"the broker did not accept the event: {exc}") from exc

    def describe(self, message: Describe) -> None:
        """Ask a worker of the service to describe its workflow."""
        try:
            send(
                self._celery, DESCRIBE, message, service_queue(message.deployment, message.service)
            )
        except (OperationalError, OSError) as exc:
            raise Unavailable(f"the broker did not accept the request: {exc}") from exc
