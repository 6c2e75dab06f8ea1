"""The outbox: which tasks' first steps reached the broker, and sending again those that did not.

A task is committed, then its step is published (commit before dispatch). A process that dies
in between leaves a queued task that no message names. So every sender notes the steps the
broker took (:meth:`Outbox.send`); a thread writes the notes in batches, off the request's
path. The control-plane consumer sweeps (:meth:`Outbox.sweep`): a task dispatched more than
``redispatch_after`` seconds ago and never noted as published has its step sent again.

What this costs: a process that dies after publishing but before its batch is written leaves
steps that are sent twice, and the workflow runs twice (delivery is at least once anyway);
the control plane records the task once. A task waiting for its session's turn has no
dispatch time and is left alone.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from sqlalchemy.exc import SQLAlchemyError

from app.control.dispatch import Dispatcher
from app.control.lifecycle import Lifecycle
from app.errors import Unavailable
from app.models.base import utcnow
from workers.protocol import RunStep

log = logging.getLogger(__name__)

#: Seconds between two writes of the notes (and the most a clean stop waits for one).
FLUSH_EVERY = 0.2


class Outbox:
    """Sends tasks' first steps, notes that the broker took them, and resends lost ones."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        dispatcher: Dispatcher,
        redispatch_after: float,
        *,
        swept: bool = True,
    ) -> None:
        self._lifecycle = lifecycle
        self._dispatcher = dispatcher
        self.redispatch_after = redispatch_after
        #: False for the embedded broker: its messages live and die with this process, so
        #: there is nothing to note nor to sweep; a restart queues every unfinished task
        #: again (:meth:`requeue_lost`).
        self.swept = swept
        self._published: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None

    def send(self, step: RunStep) -> None:
        """Publish a task's first step (raises :class:`Unavailable` if the broker refuses
        it), and note it for the next batch."""
        self._dispatcher.run_step(step)
        if not self.swept:
            return
        with self._lock:
            self._published.add(step.task_id)
            if self._writer is None:
                self._stop.clear()
                self._writer = threading.Thread(
                    target=self._write_until_stopped, name="celeriac-outbox", daemon=True
                )
                self._writer.start()

    def flush(self) -> None:
        """Write the notes taken so far; kept for the next try if the database fails."""
        with self._lock:
            ids, self._published = self._published, set()
        if not ids:
            return
        try:
            self._lifecycle.note_published(ids)
        except SQLAlchemyError:
            log.warning("could not note %d published task(s); trying again", len(ids))
            with self._lock:
                self._published |= ids

    def close(self) -> None:
        """Stop the writer after a last write."""
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            self._stop.set()
            writer.join(timeout=10)
        self.flush()

    def sweep(self, cutoff: dt.datetime | None = None) -> list[str]:
        """Send again the steps of tasks dispatched before ``cutoff`` (by default
        ``redispatch_after`` seconds ago) that no sender noted as published; returns their
        ids."""
        if cutoff is None:
            cutoff = utcnow() - dt.timedelta(seconds=self.redispatch_after)

        def resend(step: RunStep) -> bool:
            try:
                self._dispatcher.run_step(step)
            except Unavailable:
                log.warning("the broker refused a step sent again; the next sweep retries")
                return False
            return True

        sent = self._lifecycle.resend_overdue(cutoff, resend)
        if sent:
            log.warning("sent again %d task(s) that no sender had published", len(sent))
        return sent

    def requeue_lost(self) -> int:
        """Mark every dispatched task that has not ended as queued and unpublished, for the
        next sweep to send again; returns how many. For a broker that lost every message:
        the embedded one, when its process restarts."""
        return self._lifecycle.requeue_lost()

    def _write_until_stopped(self) -> None:
        while not self._stop.wait(FLUSH_EVERY):
            self.flush()
