"""Leases: every running task is held by a live worker, and one that none holds runs again.

A task that is ``running`` or ``waiting_input`` is held by the worker that runs it: the worker
reports its start, then lists the task in every heartbeat (``Heartbeat.tasks``) until its
outcome is in the broker. Each report renews the task's lease (``tasks.held_at``). A lease
runs out ``MISSED_BEATS`` heartbeat intervals after its last renewal, once its worker too
has been silent that long: it died or was cut off. (A worker still heard from keeps its
tasks even when it no longer lists one: that task's outcome may wait in the broker, behind a
control plane that restarted or unacknowledged in a consumer that was killed, and taking the
task would run it twice.) The control-plane consumer then queues the task again and sends
its first step again (:meth:`Leases.recover`, through the lifecycle's ``recover`` and the one
publish path), whatever the transport did with the first message.

The bound: a task whose worker stops holding it is queued and sent again within
``MISSED_BEATS + 1`` heartbeat intervals plus one sweep period (:attr:`Leases.bound`; 50 s
with the defaults). The lease itself is three intervals; the lease's clock is the newest
heartbeat recorded, which the control-plane consumer's own beats move on every interval;
the sweep looks once a period. Leases are read by that clock, not by the wall clock, so a
control plane that was down and catches up on its backlog of reports takes no task from a
worker whose heartbeats it has not read yet.

Heard once more: while the database is away, the heartbeats that reach the control plane
cannot be recorded; their retries come back later and out of order, so after the outage the
clock moves on with the first heartbeat recorded, and workers whose heartbeats are still on
their way would look silent. So a heartbeat that could not be recorded, and a sweep that
could not read the leases, hold every lease (:meth:`Leases.missed`): no task is taken until
the clock has run a whole lease past the last such failure, time for every live worker to
be heard again.

Recorded once: the recovered task is ``queued``, so the outcome of the first run, if it
arrives late (a worker cut off, then back), is still recorded; once a run's outcome is
recorded, the other run's start, events and outcome change nothing (statuses only move along
the transition table, events are unique per task and number). The workflow itself may run
twice, as with any redelivery.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from sqlalchemy.exc import InterfaceError, OperationalError

from app.control.dispatch import Dispatcher
from app.control.lifecycle import Lifecycle, Recovered
from app.control.registry import MISSED_BEATS
from app.errors import Unavailable
from app.models.base import utcnow
from workers.protocol import RunStep

log = logging.getLogger(__name__)


class Leases:
    """Recovers the tasks that no live worker holds any more."""

    def __init__(
        self, lifecycle: Lifecycle, dispatcher: Dispatcher, heartbeat_interval: float
    ) -> None:
        self._lifecycle = lifecycle
        self._dispatcher = dispatcher
        self.heartbeat_interval = heartbeat_interval
        #: How long a task stays held after its worker last said it runs it.
        self.lease = dt.timedelta(seconds=MISSED_BEATS * heartbeat_interval)
        self._missed_at: dt.datetime | None = None
        self._lock = threading.Lock()

    def missed(self, at: dt.datetime | None = None) -> None:
        """A heartbeat could not be recorded, or the leases read, at ``at`` (now by default):
        the database failed. No lease runs out until a whole lease after the last such
        failure: a worker's silence counts only while its heartbeats could be heard."""
        at = at or utcnow()
        with self._lock:
            if self._missed_at is None or at > self._missed_at:
                self._missed_at = at

    def bound(self, sweep_period: float) -> float:
        """Seconds within which a task no worker holds is sent again, sweeping every
        ``sweep_period`` seconds: the lease, one interval for the clock, one sweep."""
        return (MISSED_BEATS + 1) * self.heartbeat_interval + sweep_period

    def recover(self) -> list[Recovered]:
        """Queue again, and send again, every task whose lease ran out; what was recovered.
        A broker that refuses a step stops this sweep; the next one tries again."""

        def resend(step: RunStep) -> bool:
            try:
                self._dispatcher.run_step(step)
            except Unavailable:
                log.warning("the broker refused a recovered task's step; the next sweep retries")
                return False
            return True

        try:
            recovered = self._lifecycle.recover(self.lease, resend, not_before=self._missed_at)
        except (OperationalError, InterfaceError):
            self.missed()
            raise
        for task in recovered:
            log.warning(
                "task %s was %s on %s, which went silent: queued and sent again",
                task.task_id,
                task.status.value,
                task.worker or "an unknown worker",
            )
        return recovered
