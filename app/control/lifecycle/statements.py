"""The lifecycle's statements on tasks and events, built once with bound parameters.

Every task passes through these (the control plane's hot path), so they are Core statements
compiled once, never ORM objects; each status guard comes from the transition table
(:func:`may_move`), never from a status list written here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    DateTime,
    Integer,
    Select,
    String,
    Update,
    and_,
    bindparam,
    case,
    column,
    func,
    literal,
    or_,
    select,
    true,
)
from sqlalchemy.dialects import postgresql

from app.control.lifecycle.attempts import Attempts
from app.control.lifecycle.guards import may_move, unfinished
from app.models import (
    Deployment,
    Event,
    EventDirection,
    Operation,
    StoppedStep,
    Task,
    TaskStatus,
    Worker,
)
from app.models.base import from_timestamp, table_of
from workers.protocol import StepEvent

tasks = table_of(Task)
events = table_of(Event)
stopped_steps = table_of(StoppedStep)
_deployments = table_of(Deployment)
_workers = table_of(Worker)

#: The columns a new task fills in.
NEW_TASK = (
    "id",
    "session_id",
    "service",
    "input",
    "status",
    "attempts",
    "created_at",
    "dispatched_at",
    "controls",
    "expires_at",
    "cap_group",
    "pinned_version",
)

#: The task's current run, if the task exists.
TASK_RUN = select(tasks.c.run).where(tasks.c.id == bindparam("task_id"))


def same_run() -> ColumnElement[bool]:
    """True for a task whose current run is the one a report names (``p_run``); a report
    from before runs were numbered (run 0) names whichever is current."""
    run = bindparam("p_run", type_=Integer)
    return or_(run == 0, tasks.c.run == run)


#: A worker took the task: where to send it events (its attempt is counted with its row in
#: ``task_attempts``). Reports may arrive in any order, so the status moves only where the
#: table lets a start move it: a start recorded after the task's question does not hide that
#: it waits for input, and one recorded after its outcome does not bring it back to life.
START = (
    tasks.update()
    # An ended task keeps the start and the worker of its run, unless its end overtook its
    # start report: another run's start (a redelivery, a recovered task's first message)
    # must not move them after the end.
    .where(
        tasks.c.id == bindparam("task_id"),
        same_run(),
        or_(unfinished(), tasks.c.started_at.is_(None)),
    )
    .values(
        worker=bindparam("p_worker"),
        started_at=bindparam("p_started_at"),
        inbox=bindparam("p_inbox"),
        held_at=bindparam("p_started_at"),
        status=case(
            (may_move(TaskStatus.RUNNING, Operation.START), TaskStatus.RUNNING.value),
            else_=tasks.c.status,
        ),
    )
)

#: The events clients sent in, for a worker that just reported where it runs the task.
INPUTS = (
    select(events.c.seq, events.c.data)
    .where(
        events.c.task_id == bindparam("task_id"),
        events.c.direction == EventDirection.IN.value,
    )
    .order_by(events.c.seq)
)

AWAIT_INPUT = (
    tasks.update()
    .where(
        tasks.c.id == bindparam("task_id"),
        may_move(TaskStatus.WAITING_INPUT, Operation.AWAIT_INPUT),
    )
    .values(status=TaskStatus.WAITING_INPUT.value)
)

TASK_FOR_INPUT = (
    select(tasks.c.status, tasks.c.inbox)
    .where(tasks.c.id == bindparam("task_id"))
    .with_for_update()
)
#: The type of the event a run streamed under a number, if one is stored.
STORED_OUTPUT_TYPE = select(events.c.type).where(
    events.c.task_id == bindparam("task_id"),
    events.c.direction == EventDirection.OUT.value,
    events.c.seq == bindparam("seq"),
)
NEXT_OUTPUT_SEQ = select(func.coalesce(func.max(events.c.seq) + 1, 0)).where(
    events.c.task_id == bindparam("task_id"), events.c.direction == EventDirection.OUT.value
)
SET_EVENT_COUNT = (
    tasks.update()
    .where(tasks.c.id == bindparam("task_id"))
    .values(event_count=bindparam("p_event_count"))
)
NEXT_INPUT_SEQ = select(func.coalesce(func.max(events.c.seq) + 1, 0)).where(
    events.c.task_id == bindparam("task_id"), events.c.direction == EventDirection.IN.value
)
RESUME = (
    tasks.update()
    .where(tasks.c.id == bindparam("task_id"), may_move(TaskStatus.RUNNING, Operation.RESUME))
    .values(status=TaskStatus.RUNNING.value)
)

MARK_PUBLISHED = (
    tasks.update()
    .where(tasks.c.id.in_(bindparam("ids", expanding=True)), tasks.c.published_at.is_(None))
    .values(published_at=bindparam("now"))
)

#: Tasks sent again per sweep, at most; the next sweep takes the rest.
SWEEP_BATCH = 200


def with_first_step(*more: Any) -> Select[Any]:
    """Tasks with what their first step needs (see ``first_step_again`` in
    ``steps``), their service's and cap group (see ``caps``), and the columns ``more``."""
    return select(
        tasks.c.id,
        tasks.c.deployment_id,
        tasks.c.cap_group,
        tasks.c.session_id,
        tasks.c.service,
        tasks.c.input,
        tasks.c.first_seq,
        tasks.c.run,
        tasks.c.controls,
        tasks.c.expires_at,
        tasks.c.pinned_version,
        _deployments.c.name.label("deployment_name"),
        _deployments.c.version,
        *more,
    ).join(_deployments, _deployments.c.id == tasks.c.deployment_id)


OVERDUE = (
    with_first_step()
    .where(
        tasks.c.status == TaskStatus.QUEUED.value,
        tasks.c.published_at.is_(None),
        tasks.c.dispatched_at.is_not(None),
        tasks.c.dispatched_at < bindparam("cutoff"),
    )
    .order_by(tasks.c.dispatched_at)
    .limit(SWEEP_BATCH)
    # Control-plane consumers sweep side by side: each takes rows no other holds.
    .with_for_update(of=tasks, skip_locked=True)
)

#: Every dispatched task that has not ended is queued again, and unpublished (but parked
#: ones: no step of theirs is in a queue, and the answer sends one).
REQUEUE_LOST = (
    tasks.update()
    .where(
        may_move(TaskStatus.QUEUED, Operation.REQUEUE),
        tasks.c.dispatched_at.is_not(None),
        tasks.c.parked_at.is_(None),
    )
    .values(status=TaskStatus.QUEUED.value, published_at=None)
)


#: The statuses of a task that a worker holds: those a lost lease recovers from.
_HELD = may_move(TaskStatus.QUEUED, Operation.RECOVER)
#: When the task's lease was last renewed (a task running before leases: its start).
_HELD_SINCE = func.coalesce(tasks.c.held_at, tasks.c.started_at, tasks.c.created_at)
#: The task's worker was heard from since ``cutoff`` and has not stopped. Such a worker may
#: no longer list a task whose outcome it already sent, while the outcome waits in the broker
#: (behind a control plane that restarts, or unacknowledged in a consumer that was killed):
#: taking the task from it would run the task twice. Only a worker that went silent loses
#: its tasks. The process heard from must be the one that ran the task, started before the
#: run: a worker started again under the same node name (as a supervisor restarts it) never
#: ran its dead predecessor's tasks, and does not hold them.
_WORKER_ALIVE = (
    select(_workers.c.name)
    .where(
        _workers.c.name == tasks.c.worker,
        _workers.c.last_seen >= bindparam("cutoff"),
        _workers.c.stopped_at.is_(None),
        _workers.c.started_at <= func.coalesce(tasks.c.started_at, tasks.c.created_at),
    )
    .exists()
)
#: A parked task is held by nobody, and needs nobody until its answer comes.
_LEASE_RAN_OUT = and_(
    _HELD, tasks.c.parked_at.is_(None), bindparam("cutoff") > _HELD_SINCE, ~_WORKER_ALIVE
)

#: A worker's heartbeat listed these tasks: their leases run from its time. An older
#: heartbeat, processed late, never shortens a lease.
RENEW = (
    tasks.update()
    .where(
        tasks.c.id.in_(bindparam("ids", expanding=True)),
        _HELD,
        or_(tasks.c.held_at.is_(None), tasks.c.held_at < bindparam("at")),
    )
    .values(held_at=bindparam("at"))
)
#: The heartbeat of a worker that lists no tasks (older than leases) renews every task
#: whose start it reported.
RENEW_ALL_OF = (
    tasks.update()
    .where(
        tasks.c.worker == bindparam("p_worker"),
        _HELD,
        or_(tasks.c.held_at.is_(None), tasks.c.held_at < bindparam("at")),
    )
    .values(held_at=bindparam("at"))
)

#: The time of the newest heartbeat recorded: the leases' clock (see ``app.control.leases``).
NEWEST_HEARTBEAT = select(func.max(_workers.c.last_seen))

#: Held tasks whose lease ran out before ``cutoff``, oldest first, with what their first
#: step needs.
EXPIRED = (
    with_first_step(tasks.c.status, tasks.c.worker)
    .where(_LEASE_RAN_OUT)
    .order_by(_HELD_SINCE)
    .limit(SWEEP_BATCH)
    # Control-plane consumers sweep side by side: each takes rows no other holds.
    .with_for_update(of=tasks, skip_locked=True)
)

#: A task whose lease ran out is queued again, its step already sent again: no worker holds
#: it, and events sent to it wait for the next start (which sends them on).
RECOVER = (
    tasks.update()
    .where(tasks.c.id == bindparam("task_id"), _LEASE_RAN_OUT)
    .values(
        status=TaskStatus.QUEUED.value,
        held_at=None,
        inbox=None,
        dispatched_at=bindparam("now"),
        published_at=bindparam("now"),
    )
)


#: The task to retry, locked, with what its first step needs (but its new ``first_seq``).
TO_RETRY = (
    with_first_step(tasks.c.status)
    .where(tasks.c.id == bindparam("task_id"), tasks.c.deployment_id == bindparam("deployment_id"))
    .with_for_update(of=tasks)
)


#: The current version of a task's deployment.
_CURRENT_VERSION = select(_deployments.c.version).where(_deployments.c.id == tasks.c.deployment_id)


def requeue_for_retry(by: Operation) -> Update:
    """A task queued again as a new run (``by`` a client's retry, or the end of a retrying
    task's backoff): what its last run left (outcome, worker, lease) is cleared, its earlier
    runs stay in ``task_attempts``, and its next run numbers its events after those stored.
    ``dispatched_at`` is empty while the task waits for its session's turn. A durable task
    is pinned again, to the deployment's current version: its new run starts over."""
    statement = tasks.update().where(
        tasks.c.id == bindparam("task_id"), may_move(TaskStatus.QUEUED, by)
    )
    if by is Operation.RETRY_DUE:
        statement = statement.where(tasks.c.retry_at <= bindparam("now"))
    return statement.values(
        status=TaskStatus.QUEUED.value,
        run=tasks.c.run + 1,
        result=None,
        error=None,
        event_count=None,
        first_seq=NEXT_OUTPUT_SEQ.scalar_subquery(),
        worker=None,
        held_at=None,
        inbox=None,
        started_at=None,
        finished_at=None,
        retry_at=None,
        expires_at=bindparam("p_expires_at"),
        dispatched_at=bindparam("p_dispatched_at"),
        published_at=None,
        # A run parked before (then cancelled) is not the new run: unmarked, it has a lease.
        parked_at=None,
        wake_at=None,
        pinned_version=case(
            (tasks.c.pinned_version.is_(None), None), else_=_CURRENT_VERSION.scalar_subquery()
        ),
    ).returning(tasks.c.first_seq, tasks.c.run, tasks.c.pinned_version)


RETRY = requeue_for_retry(Operation.RETRY)
RETRY_DUE = requeue_for_retry(Operation.RETRY_DUE)

#: Retrying tasks whose backoff ran out by ``now``, locked, with what their first step needs.
DUE = (
    with_first_step(tasks.c.status, tasks.c.session_id)
    .where(tasks.c.status == TaskStatus.RETRYING.value, tasks.c.retry_at <= bindparam("now"))
    .order_by(tasks.c.retry_at)
    .limit(SWEEP_BATCH)
    .with_for_update(of=tasks, skip_locked=True)
)
#: When the next retrying task is due, if any.
NEXT_DUE = select(func.min(tasks.c.retry_at)).where(tasks.c.status == TaskStatus.RETRYING.value)

#: What a task ended tells of the cap slot it may free (see ``caps``).
_CAPPED = (tasks.c.deployment_id, tasks.c.service, tasks.c.cap_group)
#: What recording an outcome returns of the task it changed.
FINISHED = (tasks.c.session_id, tasks.c.attempts, *_CAPPED)

#: The task to cancel, locked: its status, session and run.
TO_CANCEL = (
    select(tasks.c.id, tasks.c.status, tasks.c.session_id, tasks.c.run, tasks.c.inbox, *_CAPPED)
    .where(tasks.c.id == bindparam("task_id"), tasks.c.deployment_id == bindparam("deployment_id"))
    .with_for_update()
)
#: A deployment's tasks that have not ended, locked (its deletion cancels them).
UNFINISHED_OF = (
    select(tasks.c.id, tasks.c.run)
    .where(tasks.c.deployment_id == bindparam("deployment_id"), unfinished())
    .with_for_update()
)


def end_early(status: TaskStatus, by: Operation) -> Update:
    """The task ends ``status`` (``by`` a cancel or a time-out) before its run reported its
    end, with the error ``p_error``; only its current run (``p_run``) is ended."""
    return (
        tasks.update()
        .where(tasks.c.id == bindparam("task_id"), same_run(), may_move(status, by))
        .values(
            status=status.value,
            error=bindparam("p_error"),
            finished_at=bindparam("now"),
            retry_at=None,
        )
    )


CANCEL = end_early(TaskStatus.CANCELLED, Operation.CANCEL)
TIME_OUT = end_early(TaskStatus.TIMED_OUT, Operation.TIME_OUT)

#: Tasks still queued past their allowed wait, locked: they time out.
EXPIRED_IN_QUEUE = (
    select(tasks.c.id, tasks.c.session_id, tasks.c.run, tasks.c.expires_at, *_CAPPED)
    .where(tasks.c.status == TaskStatus.QUEUED.value, tasks.c.expires_at < bindparam("now"))
    .order_by(tasks.c.expires_at)
    .limit(SWEEP_BATCH)
    .with_for_update(of=tasks, skip_locked=True)
)
#: Tasks a worker holds, with controls: those past their time limit time out (checked in
#: Python: the limit is in ``controls``). Few rows: only tasks that run now. (A task queued
#: again keeps its last run's start, and is not running.)
RUNNING_WITH_LIMITS = select(
    tasks.c.id,
    tasks.c.session_id,
    tasks.c.run,
    tasks.c.started_at,
    tasks.c.parked_at,
    tasks.c.controls,
    tasks.c.inbox,
    *_CAPPED,
).where(
    _HELD,
    may_move(TaskStatus.TIMED_OUT, Operation.TIME_OUT),
    tasks.c.controls.is_not(None),
    tasks.c.started_at.is_not(None),
)

#: An ended task, deleted (its events and runs go with it).
DELETE_ENDED = tasks.delete().where(
    tasks.c.id == bindparam("task_id"),
    tasks.c.deployment_id == bindparam("deployment_id"),
    ~unfinished(),
)

#: The stopped runs workers must still know of, newest first.
STOPPED_SINCE = (
    select(stopped_steps.c.task_id, stopped_steps.c.run)
    .where(stopped_steps.c.stopped_at >= bindparam("cutoff"))
    .order_by(stopped_steps.c.stopped_at.desc())
    .limit(bindparam("limit"))
)
PURGE_STOPPED = stopped_steps.delete().where(stopped_steps.c.stopped_at < bindparam("cutoff"))


def finish(status: TaskStatus, *, with_start: bool, by: Operation = Operation.FINISH) -> Update:
    """The outcome ``status`` of a run that has not ended (``by`` its end, or its stop at
    its time limit), with its start if ``with_start`` (a quick run, whose start is reported
    with its end). A retrying task is sent again at ``p_retry_at``."""
    statement = (
        tasks.update()
        .where(tasks.c.id == bindparam("p_task_id"), same_run(), may_move(status, by))
        .values(
            status=status.value,
            result=bindparam("p_result"),
            error=bindparam("p_error"),
            event_count=bindparam("p_event_count"),
            finished_at=bindparam("p_finished_at"),
        )
    )
    if status is TaskStatus.RETRYING:
        statement = statement.values(retry_at=bindparam("p_retry_at"))
    if with_start:
        statement = statement.values(
            attempts=tasks.c.attempts + 1,
            worker=bindparam("p_worker"),
            started_at=bindparam("p_started_at"),
        )
    return statement


#: The columns of a stored event, in the order its rows are written.
_EVENT_COLUMNS = ("task_id", "direction", "seq", "type", "qualified_name", "data", "created_at")


def finish_at_once(finish: Update, attempts: Attempts | None = None) -> Select[Any]:
    """PostgreSQL: ``finish`` and the insert of the run's last events as one statement, and
    with ``attempts`` the run's attempt (a quick run, whose start comes with its end).

    The events come as one JSON array (``p_events``) and are stored only if the task row
    changed, as in the transaction that SQLite runs; the statement commits on its own, so
    recording an outcome is one round trip instead of four (BEGIN, UPDATE, INSERT, COMMIT).
    """
    done = finish.returning(tasks.c.id, *FINISHED).cte("done")
    last = (
        func.json_to_recordset(bindparam("p_events", type_=JSON))
        .table_valued(
            column("seq", Integer),
            column("type", String),
            column("qualified_name", String),
            column("data", JSON),
            column("created_at", DateTime(timezone=True)),
        )
        .render_derived(name="last", with_types=True)
    )
    rows = select(done.c.id, literal(EventDirection.OUT.value), *last.c).select_from(
        done.join(last, true())
    )
    store = postgresql.insert(events).from_select(_EVENT_COLUMNS, rows).on_conflict_do_nothing()
    recorded = [] if attempts is None else attempts.in_finish(done)
    returned = (done.c[column.name] for column in FINISHED)
    return select(*returned).add_cte(store.cte("stored"), *recorded)


def event_row(message: StepEvent) -> dict[str, Any]:
    """The row of an event a workflow streamed."""
    event: dict[str, Any] = message.event
    return {
        "task_id": message.task_id,
        "direction": EventDirection.OUT.value,
        "seq": message.seq,
        "type": str(event.get("type", "Event"))[:200],
        "qualified_name": str(event.get("qualified_name", ""))[:500],
        "data": event.get("data", {}),
        "created_at": from_timestamp(message.at),
    }
