"""Stopping runs: what follows a task's early end (a cancel, a time-out, a deletion).

The lifecycle records the end and the stopped run first (``stopped_steps``); this module
then tells the workers (a broadcast on the stops exchange, see ``workers.stops``), wakes the
task's waiters, and sends the first step of the session task whose turn it now is (and of
the tasks given the cap slots freed). A worker
that (re)connects asks for the runs stopped meanwhile (:meth:`Stops.answer`).
"""

from __future__ import annotations

import datetime as dt
import logging

from app.control.dispatch import Dispatcher
from app.control.lifecycle import Ended, Lifecycle
from app.control.outbox import Outbox
from app.control.waiter import TaskWaiter
from app.errors import Unavailable
from workers.protocol import StopRuns, StopsWanted

log = logging.getLogger(__name__)

#: How long a stopped run is remembered for workers that connect later: a step cancelled
#: while queued that is still in its queue after this long may run (it is then recorded as
#: a run of an ended task, changing nothing).
STOPS_KEPT = dt.timedelta(days=7)
#: The most stopped runs sent to a worker that connects (the newest).
STOPS_SENT = 100_000


class Stops:
    """Tells workers of stopped runs, and carries on after a task's early end."""

    def __init__(
        self, lifecycle: Lifecycle, dispatcher: Dispatcher, outbox: Outbox, waiter: TaskWaiter
    ) -> None:
        self._lifecycle = lifecycle
        self._dispatcher = dispatcher
        self._outbox = outbox
        self._waiter = waiter

    def ended(self, ended: Ended, reason: str) -> None:
        """Carry on after tasks ended early for ``reason`` (``cancelled``, ``timed_out``)."""
        for task_id, _run in ended.runs:
            self._waiter.notify(task_id)
        self.broadcast(ended.runs, reason)
        for inbox, task_id, run in ended.inboxes:
            # Also straight to the worker that runs it (a broadcast copy is a no-op there):
            # on SQS, broadcasts reach no worker.
            try:
                self._dispatcher.deliver(inbox, StopRuns(runs=[[task_id, run]], reason=reason))
            except Unavailable:
                log.warning("the broker refused to stop task %s on its worker", task_id)
        for step in ended.following:
            try:
                self._outbox.send(step)
            except Unavailable:
                log.warning(
                    "the broker refused task %s, next in its turn; the outbox sends it "
                    "once the broker is back",
                    step.task_id,
                )

    def broadcast(self, runs: list[tuple[str, int]], reason: str) -> None:
        """Tell every worker connected now to stop ``runs`` (they are recorded already: a
        worker that misses this reads them when it reconnects)."""
        if not runs:
            return
        try:
            self._dispatcher.stop(StopRuns(runs=[list(run) for run in runs], reason=reason))
        except Unavailable:
            log.warning(
                "the broker refused to stop %d run(s); workers learn of them when they reconnect",
                len(runs),
            )

    def answer(self, message: StopsWanted) -> None:
        """Send a worker that (re)connected every run it must not start."""
        runs = self._lifecycle.stopped_runs(STOPS_KEPT, STOPS_SENT)
        stops = StopRuns(runs=[list(run) for run in runs], reason="stopped", complete=True)
        self._dispatcher.deliver(message.inbox, stops)
