"""Deadlines the control plane keeps: retries whose backoff ran out, tasks that waited in
the queue past their allowed wait, and runs past their time limit.

A worker stops a run at its time limit and reports it, and does not start a step that
expired; the control plane's sweep covers what no worker reports: a task that no worker
takes (it expires in the queue), and a worker that could not stop its run. Retries are sent
from here too, never as Celery ETA messages, which a Redis or SQS broker delivers again
while they wait in a worker (see the README's notes on Celery's traps). Every control-plane
consumer sweeps (tasks are locked with ``SKIP LOCKED``, so sweepers side by side share the
work), and wakes early for a retry due sooner than its next sweep. The sweep also gives the
free slots of capped services to their waiting tasks: a slot freed is handed on at once, so
this only catches what a reload's raised cap lets start (see ``app.control.lifecycle.caps``).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from app.control.lifecycle import Lifecycle
from app.control.outbox import Outbox
from app.control.stops import Stops
from app.errors import Unavailable
from app.models.base import utcnow
from workers.protocol import RunStep

log = logging.getLogger(__name__)

#: Seconds between two sweeps when nothing is due sooner.
SWEEP_EVERY = 1.0
#: Seconds past its time limit after which the control plane times out a run itself: the
#: worker's own stop (at the limit, then up to ``STOP_GRACE`` for the workflow to end) and
#: its report come first.
OVERRUN_GRACE = 30.0


class Deadlines:
    """Sweeps the deadlines, waking early for a retry due sooner."""

    def __init__(self, lifecycle: Lifecycle, outbox: Outbox, stops: Stops) -> None:
        self._lifecycle = lifecycle
        self._outbox = outbox
        self._stops = stops
        self._wake = threading.Event()
        self._next: dt.datetime | None = None
        self._lock = threading.Lock()

    def due_at(self, at: dt.datetime) -> None:
        """A retry is due at ``at``: sweep then, if that is before the next sweep."""
        with self._lock:
            if self._next is None or at < self._next:
                self._next = at
                self._wake.set()

    def sweep(self, now: dt.datetime | None = None) -> None:
        """Send the retries due and the tasks that a free cap slot waits for, and time out
        the tasks past their deadlines."""
        now = now or utcnow()

        def send(step: RunStep) -> bool:
            try:
                self._outbox.send(step)
            except Unavailable:
                log.warning("the broker refused a task; the outbox sends it once it is back")
                return False
            return True

        sent = self._lifecycle.send_due(now, send)
        if sent:
            log.info("retrying %d task(s) whose backoff ran out", len(sent))
        for step in self._lifecycle.admit_waiting():
            if not send(step):
                break  # dispatched and unpublished: the outbox's sweep sends the rest
        for step in self._lifecycle.wake_parked(now):
            # A parked task's wait timed out: its run resumes to see it (see ``parking``).
            if not send(step):
                break
        self._stops.ended(self._lifecycle.time_out_waiting(now), "timed_out")
        self._stops.ended(self._lifecycle.time_out_overrun(now, OVERRUN_GRACE), "timed_out")

    def interrupt(self) -> None:
        """End the current :meth:`wait` now (the consumer stops)."""
        self._wake.set()

    def wait(self, stop: threading.Event) -> bool:
        """Wait until the next sweep (``SWEEP_EVERY``, or sooner for a retry due sooner);
        True once ``stop`` is set."""
        due = [at for at in (self._lifecycle.next_due(), self._lifecycle.next_wake()) if at]
        upcoming = min(due) if due else None
        with self._lock:
            if upcoming is not None and (self._next is None or upcoming < self._next):
                self._next = upcoming
            at = self._next
            self._wake.clear()
        delay = SWEEP_EVERY
        if at is not None:
            delay = min(delay, max((at - utcnow()).total_seconds(), 0.0))
        self._wake.wait(delay)
        with self._lock:
            if self._next is not None and self._next <= utcnow():
                self._next = None
        return stop.is_set()
