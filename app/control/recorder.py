"""Apply service workers' reports through the task lifecycle; every method is idempotent."""

from __future__ import annotations

import json
import logging

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from app.control.deadlines import Deadlines
from app.control.dispatch import Dispatcher
from app.control.journal import Journal
from app.control.lifecycle import Lifecycle
from app.control.outbox import Outbox
from app.control.waiter import Outcome, TaskWaiter
from app.db import Database
from app.errors import Unavailable
from app.models import Worker
from app.models.base import from_timestamp, table_of
from workers.protocol import (
    DeliverEvent,
    Heartbeat,
    JournalWritten,
    RunStep,
    StepEvent,
    StepFinished,
    StepStarted,
)

_workers = table_of(Worker)
log = logging.getLogger(__name__)


class Recorder:
    """Records task progress; delivery is at least once, so repeats must change nothing."""

    def __init__(
        self,
        db: Database,
        lifecycle: Lifecycle,
        waiter: TaskWaiter,
        dispatcher: Dispatcher,
        outbox: Outbox,
        deadlines: Deadlines | None = None,
        journal: Journal | None = None,
    ) -> None:
        self._db = db
        self._journal = journal
        self._deadlines = deadlines
        self._lifecycle = lifecycle
        self._waiter = waiter
        self._dispatcher = dispatcher
        self._outbox = outbox

    def started(self, message: StepStarted) -> None:
        """A worker took the task: start it, and send it the events clients sent in before
        anyone knew where it ran."""
        for seq, data in self._lifecycle.start(message):
            self._dispatcher.deliver(
                message.inbox,
                DeliverEvent(task_id=message.task_id, seq=seq, event=json.dumps(data)),
            )
        self._waiter.notify(message.task_id)

    def event(self, message: StepEvent) -> None:
        """Store one streamed event; an ``InputRequiredEvent`` makes the task await input."""
        if self._lifecycle.record_event(message):
            self._waiter.notify(message.task_id)

    def finished(self, message: StepFinished) -> None:
        """Record the outcome with the run's last events, unless the task already ended, and
        start the session's next task. A durable run let go while it waited (parked) is no
        outcome: the task waits on, or is sent again if its answer is already there."""
        if message.parked:
            resumed = self._lifecycle.park(message)
            if resumed is not None:
                self._start(resumed)
            self._waiter.notify(message.task_id)
            return
        last_steps = None
        if message.journal is not None and self._journal is not None:
            # A durable run's last steps: listed by the time the task shows it ended.
            last_steps = self._journal.last_steps(JournalWritten.decode(message.journal))
        finished = self._lifecycle.finish(message, last_steps)
        # Waiters in this process (the embedded mode) take the outcome as it was stored.
        outcome = None
        if finished.status is not None and finished.status.terminal:
            outcome = Outcome(finished.status.value, message.result, message.error)
        self._waiter.notify(message.task_id, outcome)
        if finished.retry_at is not None and self._deadlines is not None:
            # The deadlines' sweep would find it; this wakes it at the right time.
            self._deadlines.due_at(finished.retry_at)
        if finished.following is not None:
            self._start(finished.following)
        for step in finished.admitted:
            self._start(step)

    def _start(self, step: RunStep) -> None:
        """Send the next task of a session, or of a capped service. If the broker refuses it,
        the task stays queued, marked dispatched and not published: the outbox's sweep sends
        it once the broker is back. (Its client was told it was queued; a broker away for a
        moment must not fail it, nor, through its end, every task queued behind it.)"""
        try:
            self._outbox.send(step)
        except Unavailable as exc:
            log.warning(
                "the broker refused task %s, next in its turn; the outbox sends it again "
                "%g s after its dispatch, or once the broker is back: %s",
                step.task_id,
                self._outbox.redispatch_after,
                exc,
            )

    def heartbeat(self, message: Heartbeat) -> None:
        """Note that a worker is alive (or, with ``gone``, that it stopped), and renew the
        leases of the tasks it runs."""
        with self._db.connect() as conn:
            _upsert_worker(conn, message, self._db.engine.dialect.name)
        self._lifecycle.renew(message.worker, message.tasks, from_timestamp(message.at))


def _upsert_worker(conn: Connection, message: Heartbeat, dialect: str) -> None:
    values = {
        "name": message.worker,
        "host": message.host,
        "pid": message.pid,
        "queues": message.queues,
        "deployments": message.deployments,
        "started_at": from_timestamp(message.started_at),
        "last_seen": from_timestamp(message.at),
        "stopped_at": from_timestamp(message.at) if message.gone else None,
    }
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(_workers).values(values)
    changed = {k: v for k, v in values.items() if k != "name"}
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=[_workers.c.name],
            set_=changed,
            # Heartbeats may arrive out of order: never let an older one win.
            where=_workers.c.last_seen <= changed["last_seen"],
        )
    )
