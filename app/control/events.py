"""A task's events: the stream a workflow writes, followed live, and the events sent in."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select

from app.control.dispatch import Dispatcher
from app.control.lifecycle import Lifecycle
from app.control.outbox import Outbox
from app.control.sendable import SendableEvents
from app.control.tasks import DEFAULT_NESTING, Tasks
from app.control.waiter import RELAYED_POLL, TaskWaiter
from app.db import Database
from app.errors import Conflict, InvalidInput, TooLarge
from app.models import Event, EventDirection, Task, TaskStatus
from app.models.base import table_of
from config.errors import NestedTooDeeply
from config.limits import load_json
from workers.protocol import DeliverEvent

_events = table_of(Event)
_tasks = table_of(Task)

_OUT_FROM = (
    select(_events.c.seq, _events.c.type, _events.c.qualified_name, _events.c.data)
    .where(
        _events.c.task_id == bindparam("task_id"),
        _events.c.direction == EventDirection.OUT.value,
        _events.c.seq >= bindparam("seq"),
    )
    .order_by(_events.c.seq)
    .limit(500)
)
_LAST_OUT = select(func.coalesce(func.max(_events.c.seq), -1)).where(
    _events.c.task_id == bindparam("task_id"), _events.c.direction == EventDirection.OUT.value
)
_PROGRESS = select(_tasks.c.status, _tasks.c.event_count).where(_tasks.c.id == bindparam("task_id"))

#: Seconds of silence after which a stream sends a keep-alive.
KEEP_ALIVE = 5.0
#: How long a stream of an ended task waits for events still on their way, then ends anyway.
STRAGGLER_GRACE = 5.0


@dataclass(frozen=True)
class StreamedEvent:
    """One event of a task's stream, with its sequence number."""

    seq: int
    type: str
    qualified_name: str
    data: dict[str, Any]


@dataclass(frozen=True)
class StreamEnd:
    """The task ended and every event it streamed has been read."""

    status: str


class EventLog:
    """Reads a task's stream as it grows, and sends events into running tasks."""

    def __init__(
        self,
        db: Database,
        lifecycle: Lifecycle,
        tasks: Tasks,
        waiter: TaskWaiter,
        dispatcher: Dispatcher,
        outbox: Outbox,
        sendable: SendableEvents,
        poll: float = 0.1,
        *,
        max_event_bytes: int = 262_144,
        max_nesting: int = DEFAULT_NESTING,
    ) -> None:
        self._poll = poll
        self._sendable = sendable
        self._max_event_bytes = max_event_bytes
        self._max_nesting = max_nesting
        self._db = db
        self._lifecycle = lifecycle
        self._tasks = tasks
        self._waiter = waiter
        self._dispatcher = dispatcher
        self._outbox = outbox

    def follow(self, task_id: str, after: int = -1) -> Iterator[StreamedEvent | StreamEnd | None]:
        """Every event after sequence number ``after``, as it is stored, then the end.

        Yields ``None`` after ``KEEP_ALIVE`` seconds with nothing new, so that the caller can
        send a keep-alive (and notice a client that left). Events are yielded strictly in
        order: a gap (an event still on its way) is waited for, not skipped.
        """
        next_seq = after + 1
        gap_since: float | None = None
        quiet_since = time.monotonic()
        while True:
            with self._waiter.listen(task_id) as changed:
                with self._db.engine.connect() as conn:
                    rows = conn.execute(_OUT_FROM, {"task_id": task_id, "seq": next_seq}).all()
                    progress = conn.execute(_PROGRESS, {"task_id": task_id}).first()
                start = next_seq
                for row in rows:
                    if row.seq != next_seq:
                        break
                    yield StreamedEvent(row.seq, row.type, row.qualified_name, row.data)
                    next_seq += 1
                if progress is None:
                    yield StreamEnd("deleted")
                    return
                status, count = progress
                if TaskStatus(status).terminal:
                    complete = count is None or next_seq >= count
                    gap_since = gap_since or time.monotonic()
                    if complete or time.monotonic() - gap_since > STRAGGLER_GRACE:
                        yield StreamEnd(status)
                        return
                if next_seq != start:
                    quiet_since = time.monotonic()
                elif not changed.wait(self._wake_every()) and (
                    time.monotonic() - quiet_since > KEEP_ALIVE
                ):
                    quiet_since = time.monotonic()
                    yield None

    def last_seq(self, task_id: str) -> int:
        """The sequence number of the task's latest stored event, -1 before the first."""
        with self._db.peek() as conn:
            last = conn.scalar(_LAST_OUT, {"task_id": task_id})
        return -1 if last is None else int(last)

    def _wake_every(self) -> float:
        """Seconds between re-reads of a quiet stream: long while notifications are relayed."""
        return RELAYED_POLL[0] if self._waiter.relayed else self._poll

    def send(
        self,
        deployment: str,
        task_id: str,
        event_obj_str: str,
        session_id: str | None,
        field: str = "event_obj_str",
    ) -> int:
        """Store an event sent into a running task and forward it to the worker that runs it.

        ``event_obj_str`` is LlamaDeploy's form: llama-index's JSON of the event. It must name
        an event the task's workflow takes (``app.control.sendable``), with fields that fit
        it; anything else is refused (``field`` names the request's field) before anything is
        stored, and the task is left as it was. Returns the event's sequence number among
        the task's inputs.
        """
        size = len(event_obj_str.encode("utf-8"))
        if size > self._max_event_bytes:
            raise TooLarge(
                "the event is too large",
                errors={
                    field: [
                        f"{size:,} bytes; at most {self._max_event_bytes:,} "
                        "(CELERIAC_MAX_EVENT_BYTES)"
                    ]
                },
            )
        try:
            parsed = load_json(event_obj_str, self._max_nesting)
        except json.JSONDecodeError as exc:
            raise InvalidInput(
                f"{field} is not valid JSON",
                errors={field: [f"not valid JSON: {exc.msg} at position {exc.pos}"]},
            ) from exc
        except NestedTooDeeply as exc:
            raise InvalidInput(
                "the event is nested too deeply", errors={field: [str(exc)]}
            ) from exc
        if not isinstance(parsed, dict) or not isinstance(parsed.get("qualified_name"), str):
            raise InvalidInput(
                f"{field} is not a serialized workflow event",
                errors={field: ["expected an object with a qualified_name and a value"]},
            )
        task = self._tasks.get(deployment, task_id, session_id)  # 404s
        if task.task_status.terminal:
            raise Conflict(
                f"task {task_id} has ended ({task.status}); it takes no more events",
                errors={"task_id": task_id, "status": task.status},
            )
        self._sendable.check(deployment, task.service, parsed, field, task.pinned_version)
        seq, inbox, resumed = self._lifecycle.resume(task_id, parsed)
        if resumed is not None:
            # A parked task: its step goes to its queue again, and the run that takes it is
            # sent the event with its journal.
            self._outbox.send(resumed)
        elif inbox:
            # Not yet started: the recorder forwards stored inputs when the start is reported.
            self._dispatcher.deliver(
                inbox, DeliverEvent(task_id=task_id, seq=seq, event=event_obj_str)
            )
        self._waiter.notify(task_id)
        return seq
