"""Stopped runs: what this worker must never start, and must stop if it runs.

The control plane stops a run when its task is cancelled, times out, or goes with its
deployment. It records the stop first (``stopped_steps``), then broadcasts it on the exchange
:data:`~workers.protocol.STOPS_EXCHANGE`, to which every service worker binds a queue of its
own (next to its inbox). A broadcast reaches only the queues bound at that moment, so a worker
that (re)connects asks for the whole list (``StopsWanted``) once its queues are bound, and
starts no run until it has it: every stop recorded before the list was read is in it, and
every one after reaches the bound queue. A cancelled task's step that waits in a queue is
therefore never started, whatever restarted in between; unlike Celery's ``revoke``, nothing
depends on a worker's memory. A run that cannot get the list (its worker stops, or no control
plane answers within :data:`PATIENCE`) is not started either: its step goes back to the queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from kombu import Exchange

from workers.protocol import STOPS_EXCHANGE

log = logging.getLogger(__name__)

#: Entries a worker keeps before it forgets the oldest (the control plane's list is the
#: lasting record; this is the copy a worker checks on every step).
KEPT = 100_000


#: Seconds a run waits for the control plane's list before its step goes back to the queue
#: (to be taken again, by this worker or another).
PATIENCE = 30.0

#: The routing key of every stop broadcast, and of every worker's binding to the exchange.
STOPS_ROUTING_KEY = "stops"


def stops_exchange() -> Exchange:
    """The exchange of stop broadcasts (durable: declared by senders and workers).

    A direct exchange to which every worker binds a queue of its own under one key
    (:data:`STOPS_ROUTING_KEY`): each bound queue gets a copy, on RabbitMQ as on Redis, where
    Kombu keeps the bindings and puts the copies in the queues' lists. Not a fanout exchange:
    Kombu's Redis transport carries those over publish/subscribe, which Celeriac's Redis
    transport (its own receipt, see ``workers.redis_transport``) does not read. The cost, on
    Redis: the queue of a worker that was killed (not stopped) stays bound, and gathers a
    copy of each broadcast (a stopping worker deletes it; RabbitMQ expires a dead one)."""
    return Exchange(STOPS_EXCHANGE, type="direct", durable=True)


class Stops:
    """The runs stopped, by task: the highest run number stopped, and why."""

    def __init__(self, patience: float = PATIENCE) -> None:
        self._stopped: dict[str, tuple[int, str]] = {}
        #: Whether the list is known complete. A runtime that no broker feeds (in tests)
        #: knows it from the start; a worker's is unknown until its inbox gets the list.
        self._known = True
        #: Bumped by :meth:`release`: runs waiting from before give up.
        self._releases = 0
        #: Set by :meth:`release` until the list comes or is asked for again: runs that begin
        #: to wait meanwhile (steps the stopping worker's pool had not started) give up at once.
        self._released = False
        self._patience = patience
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def note(self, runs: Iterable[Any], reason: str, *, complete: bool = False) -> list[str]:
        """Remember ``runs`` (``[task_id, run]`` pairs) as stopped for ``reason``; with
        ``complete`` (the control plane's whole list) runs may start again. Returns the ids
        of the tasks noted."""
        noted: list[str] = []
        with self._changed:
            for task_id, run in runs:
                known = self._stopped.get(task_id)
                if known is None or known[0] < int(run):
                    self._stopped[task_id] = (int(run), reason)
                noted.append(str(task_id))
            while len(self._stopped) > KEPT:
                del self._stopped[next(iter(self._stopped))]
            if complete:
                self._known, self._released = True, False
                self._changed.notify_all()
        return noted

    def unknown(self) -> None:
        """The list may have missed broadcasts (the worker (re)connects): runs wait for the
        next complete list."""
        with self._changed:
            self._known, self._released = False, False

    def release(self) -> None:
        """A worker stops: the runs waiting for the list now give up (their inbox, which
        the list would reach, is no longer read). Embedded mode runs several workers on one
        runtime: a run of another that gives up goes back to its queue, and is taken again."""
        with self._changed:
            self._releases += 1
            self._released = True
            self._changed.notify_all()

    def wait_known(self, warn_every: float = 10.0) -> bool:
        """Wait until the control plane's list arrived since the last (re)connection; False
        if the worker stops first, or after ``patience`` seconds (the run must not start: its
        step goes back to the queue)."""
        began = time.monotonic()
        with self._changed:
            if self._released and not self._known:
                return False
            releases = self._releases
            while not self._known:
                waited = time.monotonic() - began
                if self._releases != releases or waited >= self._patience:
                    return False
                if not self._changed.wait(min(warn_every, self._patience - waited)):
                    log.warning(
                        "runs wait for the control plane's list of stopped tasks (%.0f s so "
                        "far): is a control-plane consumer running?",
                        time.monotonic() - began,
                    )
            return True

    def reason(self, task_id: str, run: int) -> str | None:
        """Why run ``run`` of the task was stopped, or None if it was not. A step from
        before runs were numbered (run 0) is stopped by any stop of its task."""
        with self._lock:
            known = self._stopped.get(task_id)
        if known is None or (run and run > known[0]):
            return None
        return known[1]
