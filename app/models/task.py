"""Tasks and their statuses, with the allowed transitions written down in one place."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.attempt import TaskAttempt
from app.models.base import Base, UTCDateTime, new_id, utcnow


class TaskStatus(str, enum.Enum):
    """Where a task is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING_INPUT = "waiting_input"
    #: A run failed and its service's retry policy runs it again at ``retry_at``.
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: A run went past its time limit, or the task waited in the queue past its allowed wait.
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        """True once the task's run ended: no report moves it any more (only a retry)."""
        return self in TERMINAL

    def sources(self, by: Operation | None = None) -> frozenset[TaskStatus]:
        """The statuses from which a task may move to this one (by operation ``by``, if given)."""
        return frozenset(
            source
            for source, targets in MOVES.items()
            if self in targets and (by is None or by in targets[self])
        )


class Operation(str, enum.Enum):
    """The operations of the task lifecycle (``app.control.lifecycle``) that move a status."""

    #: A worker reported that it took the task.
    START = "start"
    #: The workflow streamed an ``InputRequiredEvent``.
    AWAIT_INPUT = "await_input"
    #: A client sent an event into a task that waits for input.
    RESUME = "resume"
    #: A worker reported the run's outcome (or the control plane failed it for a worker).
    FINISH = "finish"
    #: The broker lost the task's step with its process: it is queued to be sent again.
    REQUEUE = "requeue"
    #: No live worker holds the task any more (its lease ran out): it is sent again.
    RECOVER = "recover"
    #: A client asked to run a task that ended without success again (a new attempt).
    RETRY = "retry"
    #: A retrying task's backoff ran out: it is queued and sent again (a new attempt).
    RETRY_DUE = "retry_due"
    #: A client cancelled the task (or deleted its deployment).
    CANCEL = "cancel"
    #: A run went past its time limit, or the task waited to start past its allowed wait.
    TIME_OUT = "time_out"
    #: A durable run waiting for input was let go: the task waits with no worker.
    PARK = "park"
    #: An answer came for a parked task (or before its run was let go): it is queued and
    #: sent again, to resume from its journal.
    UNPARK = "unpark"


TERMINAL = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT}
)

#: status -> statuses it may move to -> the operations that may move it there; the task
#: lifecycle builds the guard of each of its statements from this table, and nothing else.
#:
#: ``running -> running`` is a redelivery to another worker (at-least-once delivery);
#: ``queued -> succeeded/failed/retrying/waiting_input`` happens when the outcome, or the
#: workflow's question, overtakes the start report. ``waiting_input`` moves back to
#: ``running`` when an answer is sent in, never because of a late start report. A task that
#: ended moves no more: a late start report or a late question leaves it as it is. Any
#: unfinished task is queued again when the broker lost its step with the embedded server's
#: process (a queued one stays queued, and is sent again). A running task, or one waiting for
#: input, whose lease ran out (no live worker listed it in its heartbeats for a while) is
#: recovered: queued and sent again. A run that failed with an error its service's retry
#: policy retries makes the task ``retrying`` (it keeps its session's turn), and queued again
#: once the backoff ran out. Any task that has not ended can be cancelled; one that has not
#: ended can time out (its run past its time limit, or its wait in the queue past the allowed
#: one). A task that failed, was cancelled or timed out is queued again when a client retries
#: it; no report moves an ended task. A durable task's run that waits for input may be let
#: go (parked: the task waits, with no worker), and the answer queues it again (unparked).
_UNFINISHED_ENDS: dict[TaskStatus, frozenset[Operation]] = {
    TaskStatus.SUCCEEDED: frozenset({Operation.FINISH}),
    TaskStatus.FAILED: frozenset({Operation.FINISH}),
    TaskStatus.RETRYING: frozenset({Operation.FINISH}),
    TaskStatus.CANCELLED: frozenset({Operation.CANCEL}),
    TaskStatus.TIMED_OUT: frozenset({Operation.TIME_OUT}),
}
_ENDED_AGAIN = {TaskStatus.QUEUED: frozenset({Operation.RETRY})}
MOVES: dict[TaskStatus, dict[TaskStatus, frozenset[Operation]]] = {
    TaskStatus.QUEUED: {
        TaskStatus.QUEUED: frozenset({Operation.REQUEUE}),
        TaskStatus.RUNNING: frozenset({Operation.START}),
        TaskStatus.WAITING_INPUT: frozenset({Operation.AWAIT_INPUT}),
        **_UNFINISHED_ENDS,
    },
    TaskStatus.RUNNING: {
        TaskStatus.QUEUED: frozenset({Operation.REQUEUE, Operation.RECOVER, Operation.UNPARK}),
        TaskStatus.RUNNING: frozenset({Operation.START}),
        TaskStatus.WAITING_INPUT: frozenset({Operation.AWAIT_INPUT, Operation.PARK}),
        **_UNFINISHED_ENDS,
    },
    TaskStatus.WAITING_INPUT: {
        TaskStatus.QUEUED: frozenset({Operation.REQUEUE, Operation.RECOVER, Operation.UNPARK}),
        TaskStatus.RUNNING: frozenset({Operation.RESUME}),
        TaskStatus.WAITING_INPUT: frozenset({Operation.PARK}),
        **_UNFINISHED_ENDS,
    },
    TaskStatus.RETRYING: {
        TaskStatus.QUEUED: frozenset({Operation.RETRY_DUE}),
        TaskStatus.CANCELLED: frozenset({Operation.CANCEL}),
    },
    TaskStatus.SUCCEEDED: {},
    TaskStatus.FAILED: _ENDED_AGAIN,
    TaskStatus.CANCELLED: _ENDED_AGAIN,
    TaskStatus.TIMED_OUT: _ENDED_AGAIN,
}

#: status -> statuses it may move to, by any operation.
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    source: frozenset(targets) for source, targets in MOVES.items()
}


#: The conditions of the two partial indexes of capped tasks (as written in migration 0015): a
#: task not ended (``finished_at`` is set by every end and by ``retrying``, and cleared when it
#: is queued again) that was sent, or that waits to be.
_CAP_HELD = "cap_group IS NOT NULL AND dispatched_at IS NOT NULL AND finished_at IS NULL"
_CAP_WAITING = "cap_group IS NOT NULL AND dispatched_at IS NULL AND finished_at IS NULL"


class Task(Base):
    """One request to a service: input, status, result or error, attempts and timestamps."""

    __tablename__ = "tasks"
    __table_args__ = (
        # A capped service's tasks that hold a slot (sent, not ended) and those that wait for
        # one, apart: counting the first and finding the oldest of the second read only them
        # (``app.control.lifecycle.caps``). Uncapped tasks are in neither.
        Index(
            "ix_tasks_cap_held",
            "deployment_id",
            "service",
            "cap_group",
            sqlite_where=text(_CAP_HELD),
            postgresql_where=text(_CAP_HELD),
        ),
        Index(
            "ix_tasks_cap_waiting",
            "deployment_id",
            "service",
            "created_at",
            "id",
            sqlite_where=text(_CAP_WAITING),
            postgresql_where=text(_CAP_WAITING),
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    #: Empty for a task run on its own (``tasks/run`` without a session).
    session_id: Mapped[str | None] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), index=True, nullable=True
    )
    service: Mapped[str] = mapped_column(String(200))
    input: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[TaskStatus] = mapped_column(String(20), default=TaskStatus.QUEUED, index=True)
    result: Mapped[Any] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: The task's run: 1, then one more each time it is queued again by a retry (by hand or
    #: by its retry policy). A worker's reports name the run they are about, so that a late
    #: report of an earlier run never touches the current one.
    run: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    #: The task's controls (``config.deployment.controls``, in the YAML's spelling): its
    #: service's, with what the client set for this task; empty when none applies.
    controls: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    #: When a queued task that has not started expires (``queue-timeout``).
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: When a retrying task is queued and sent again.
    retry_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: How many events the run streamed, known once it ends.
    event_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: The number of the run's first event: 0, or after a retry the count of the events
    #: that earlier runs stored, so that the task's stream goes on where they stopped.
    first_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: When a worker last said it holds the running task (its start report, then each of
    #: its heartbeats that lists the task): the task's lease, see ``app.control.leases``.
    held_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: The queue through which events reach the worker running the task.
    inbox: Mapped[str | None] = mapped_column(String(300), nullable=True)
    #: The task's group under its service's concurrency cap, set when it is queued: the
    #: JSON of its input's ``key`` field (``""`` for a cap without a key); empty for a task
    #: of a service without a cap. See ``app.control.lifecycle.caps``.
    cap_group: Mapped[str | None] = mapped_column(String(80), nullable=True)
    #: When a durable run waiting for input was let go (parked): the task waits with no
    #: worker, and the answer sends its step again (see ``workers.durable``).
    parked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: The deployment version a durable task's run started on (set when it is stored, and
    #: again by a retry, which starts over): every step sent again for the run names it, so
    #: the run resumes on the code it started on even after a reload. Empty for a task that
    #: is not durable: it runs on the deployment's current version.
    pinned_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: When a parked task's wait for an event times out: it is resumed then.
    wake_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: When the first step went to the broker; empty while the task waits for its session's
    #: turn or for a slot of its service's concurrency cap.
    dispatched_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: When the broker took that step (noted in batches; see ``app.control.outbox``).
    published_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: Each run of the task, first first; read only when asked for (the lifecycle writes them).
    attempt_history: Mapped[list[TaskAttempt]] = relationship(
        order_by=TaskAttempt.attempt, lazy="raise", viewonly=True
    )

    @property
    def task_status(self) -> TaskStatus:
        """The status as the enum (the column stores its string)."""
        return TaskStatus(self.status)
