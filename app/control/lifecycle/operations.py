"""The task lifecycle: every change to tasks, their sessions and their events, by name."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import CTE, Connection, Insert, Row, Select, Update, bindparam, select

from app.control.deployments import find as find_deployment
from app.control.lifecycle import statements as sql
from app.control.lifecycle.attempts import (
    LEASE_EXPIRED,
    LOSE_RECOVERED,
    LOSE_REQUEUED,
    REQUEUED,
    SUPERSEDED,
    Attempts,
    Run,
    lost_params,
)
from app.control.lifecycle.caps import WAITING_SERVICES, Caps, ServiceKey, group_of
from app.control.lifecycle.control import TaskControl
from app.control.lifecycle.keys import Keys, Replay, RequestKey
from app.control.lifecycle.parking import Parking
from app.control.lifecycle.steps import expiry, first_step_again, version_of
from app.control.lifecycle.turns import (
    MultitaskStrategy,
    Turn,
    find_session,
    pass_turn,
    session_context,
    take_turn,
)
from app.control.routing import first_step
from app.db import Database
from app.errors import Conflict
from app.models import Deployment, EventDirection, Operation, Session, Task, TaskStatus
from app.models.base import from_timestamp, new_id, table_of, utcnow
from config.settings import Settings
from workers.protocol import RunStep, StepEvent, StepFinished, StepStarted

_sessions = table_of(Session)
_deployments = table_of(Deployment)

#: A run's end as a worker reports it: the status it gives the task, and by which operation.
_ENDS = {
    TaskStatus.SUCCEEDED: Operation.FINISH,
    TaskStatus.FAILED: Operation.FINISH,
    TaskStatus.RETRYING: Operation.FINISH,
    TaskStatus.TIMED_OUT: Operation.TIME_OUT,
    TaskStatus.CANCELLED: Operation.CANCEL,
}
#: The status of a run a worker stopped, by ``StepFinished.stopped``.
_STOPPED = {"timed_out": TaskStatus.TIMED_OUT, "cancelled": TaskStatus.CANCELLED}


@dataclass(frozen=True)
class NewTask:
    """A task to store: what a client asked for, routed to a service of a deployment version."""

    id: str
    deployment_id: int
    version: int
    service: str
    input: dict[str, Any]
    session_id: str | None = None
    #: Its controls (``tasks.controls``): time limit, allowed queue wait, retry policy.
    controls: dict[str, Any] | None = None
    #: Its service's concurrency cap (the ``concurrency`` mapping of its ``celeriac`` block),
    #: if it has one: see ``app.control.lifecycle.caps``.
    concurrency: dict[str, Any] | None = None


class Alongside(Protocol):
    """Rows written with an outcome, as one with it (a durable run's last steps): in the
    outcome's statement on PostgreSQL, in its transaction elsewhere."""

    @property
    def cte(self) -> CTE:
        """PostgreSQL: the CTE that writes them, added to the outcome's statement."""

    def params(self) -> dict[str, Any]:
        """The parameters of :attr:`cte`."""

    def write(self, conn: Connection) -> None:
        """Elsewhere: write them in the outcome's transaction."""


@dataclass(frozen=True)
class Finished:
    """What recording an outcome did: the status stored (None for a redelivery, or a task
    gone), and the first step of the session's next task, whose turn it now is."""

    status: TaskStatus | None
    following: RunStep | None = None
    #: When a retrying task is sent again.
    retry_at: dt.datetime | None = None
    #: The first steps of the tasks given the cap slot the task freed (or the session's
    #: next task, when its service is capped and a slot was free).
    admitted: tuple[RunStep, ...] = ()


@dataclass(frozen=True)
class Recovered:
    """A task whose lease ran out, queued and sent again: its status then, and the worker
    that last held it."""

    task_id: str
    status: TaskStatus
    worker: str | None


class _Refused(Exception):
    """The task row was not inserted; the transaction around it must roll back."""


class _KeyTaken(Exception):
    """Another request holds the task's idempotency key; the transaction must roll back."""


class Lifecycle(TaskControl, Parking):
    """Moves tasks along the transition table, and owns every write to tasks, sessions and
    events; each operation chooses its own connection, as short and as few as it can.

    An idempotency key lives ``key_lifetime`` seconds (see ``app.control.lifecycle.keys``).
    """

    def __init__(self, db: Database, *, key_lifetime: float = Settings.idempotency_ttl) -> None:
        self._db = db
        self._keys = Keys(db.engine.dialect.name, key_lifetime)
        self._caps = Caps()
        self._insert_event = db.insert_ignoring_duplicates(sql.events)
        self._insert_stopped = db.insert_ignoring_duplicates(sql.stopped_steps)
        # INSERT INTO tasks SELECT <the new task> FROM deployments WHERE id and version match,
        # skipping a task id already used: one statement, one round trip.
        values = [bindparam(name, type_=sql.tasks.c[name].type) for name in sql.NEW_TASK]
        self._insert_task: Insert = (
            db.insert_ignoring_duplicates(sql.tasks)
            .from_select(
                [*sql.NEW_TASK, "deployment_id"],
                select(*values, _deployments.c.id).where(
                    _deployments.c.id == bindparam("deployment_id"),
                    _deployments.c.version == bindparam("version"),
                ),
            )
            .returning(sql.tasks.c.id)
        )
        self._attempts = Attempts(db.engine.dialect.name)
        #: PostgreSQL stores an outcome in one statement, with a quick run's attempt.
        self._at_once = db.engine.dialect.name == "postgresql"
        # By outcome, and by whether the start is recorded with it.
        self._finish: dict[tuple[TaskStatus, bool], Update | Select[Any]] = {}
        for status, by in _ENDS.items():
            for with_start in (False, True):
                finish = sql.finish(status, with_start=with_start, by=by)
                self._finish[status, with_start] = (
                    sql.finish_at_once(finish, self._attempts if with_start else None)
                    if self._at_once
                    else finish.returning(*sql.FINISHED)
                )
        # A quick run's outcome alone, in one statement, is for a task without a cap: a
        # capped one hands its slot on in a transaction.
        self._finish_alone = {
            status: sql.finish_at_once(
                sql.finish(status, with_start=True, by=by).where(sql.tasks.c.cap_group.is_(None)),
                self._attempts,
            )
            for status, by in _ENDS.items()
        }
        #: Those statements with the CTE of what is written alongside (see :meth:`_with`).
        self._finish_with: dict[tuple[Select[Any], CTE], Select[Any]] = {}

    def insert(
        self,
        task: NewTask,
        *,
        strategy: MultitaskStrategy = MultitaskStrategy.ENQUEUE,
        single_use_session: bool = False,
        key: RequestKey | None = None,
    ) -> tuple[Task, Turn] | Replay | None:
        """Store ``task`` as queued and say whether it may run now (with its session's
        Context); None if it was not stored (a used id, or a deployment changed since its
        version was read), and then nothing changed.

        A task without a session gets a new one, unless ``single_use_session``: then, as no
        later task could use that session, it has none, and storing it is a single INSERT
        with no transaction around it (the path of every ``tasks/run`` without a key).

        With an idempotency ``key``, the key is claimed for the task in the same transaction.
        If a live key names a task that the same request stored, nothing is stored and that
        task is returned as a :class:`Replay`; if another request holds it, :class:`Conflict`.
        """
        # Twice at most: a key found taken may expire before it is read, and is free then.
        for _ in range(2):
            now = utcnow()
            try:
                stored = self._store(task, strategy, single_use_session, key, now)
            except _Refused:
                if key is None:
                    return None
                # The id may be the one an earlier request under the key gave its task.
                return self._earlier(task.deployment_id, key, now)
            except _KeyTaken:
                assert key is not None
                replay = self._earlier(task.deployment_id, key, now)
                if replay is None:
                    continue
                return replay
            except Conflict:
                if key is None:
                    raise
                # A session busy with the task that an earlier request under the key stored.
                replay = self._earlier(task.deployment_id, key, now)
                if replay is None:
                    raise
                return replay
            if key is not None and self._keys.purge_due():
                with self._db.single() as conn:
                    self._keys.purge(conn, now)
            return stored
        return None

    def _store(
        self,
        task: NewTask,
        strategy: MultitaskStrategy,
        single_use_session: bool,
        key: RequestKey | None,
        now: dt.datetime,
    ) -> tuple[Task, Turn]:
        """:meth:`insert`'s transaction; :class:`_Refused` or :class:`_KeyTaken` when it
        rolled back."""
        row: dict[str, Any] = {
            "id": task.id,
            "deployment_id": task.deployment_id,
            "version": task.version,
            "session_id": task.session_id,
            "service": task.service,
            "input": task.input,
            "status": TaskStatus.QUEUED.value,
            "attempts": 0,
            "created_at": now,
            "dispatched_at": now,
            "controls": task.controls,
            "expires_at": expiry(task.controls, now),
            "cap_group": group_of(task.concurrency, task.input),
            # A durable run resumes on the version it started on (non-durable ones start over).
            "pinned_version": task.version if (task.controls or {}).get("durable") else None,
        }
        turn = Turn(run_now=True, context=None)
        alone = task.session_id is None and single_use_session
        if alone and key is None and row["cap_group"] is None:
            with self._db.single() as conn:
                self._insert(conn, row)
        else:
            with self._db.connect() as conn:
                if task.session_id:
                    turn = take_turn(conn, task.session_id, task.deployment_id, task.id, strategy)
                    row["dispatched_at"] = now if turn.run_now else None
                elif not alone:
                    row["session_id"] = self._open_for(conn, task, now)
                group = row["cap_group"]
                if turn.run_now and not self._admits(conn, task.deployment_id, task.service, group):
                    turn = Turn(run_now=False, context=None)
                    row["dispatched_at"] = None
                self._insert(conn, row)  # refused: the session's changes roll back
                if key is not None and not self._keys.claim(
                    conn, task.deployment_id, key, task.id, now
                ):
                    raise _KeyTaken  # the task and the session's changes roll back
        del row["version"]
        return Task(**row, run=1), turn

    def _admits(
        self, conn: Connection, deployment_id: int, service: str, group: str | None
    ) -> bool:
        """Whether a task of cap ``group`` (None: its service has no cap) may be sent now."""
        return group is None or self._caps.admits(conn, deployment_id, service, group)

    def _hand_off(self, conn: Connection, freed: Iterable[ServiceKey]) -> list[RunStep]:
        """The first steps of the tasks given the free cap slots of the ``freed`` services."""
        return [first_step_again(conn, row) for row in self._caps.hand_off(conn, freed)]

    def admit_waiting(self) -> list[RunStep]:
        """Give every capped service's free slots to its waiting tasks, one service per
        transaction; their first steps, to send. (The control plane's sweep: the tasks a
        raised cap lets start, or one skipped while a client held it; see ``caps``.)"""
        with self._db.peek() as conn:
            services = [(row.deployment_id, row.service) for row in conn.execute(WAITING_SERVICES)]
        steps: list[RunStep] = []
        for service in services:
            with self._db.connect() as conn:
                steps += self._hand_off(conn, [service])
        return steps

    def _earlier(self, deployment_id: int, key: RequestKey, now: dt.datetime) -> Replay | None:
        """The task of the same request under the live ``key``, if any (``Keys.earlier``)."""
        with self._db.peek() as conn:
            return self._keys.earlier(conn, deployment_id, key, now)

    def _insert(self, conn: Connection, row: dict[str, Any]) -> None:
        if conn.execute(self._insert_task, row).first() is None:
            raise _Refused

    def _open_for(self, conn: Connection, task: NewTask, now: dt.datetime) -> str:
        """A new session held by ``task``; its id."""
        session_id = new_id()
        conn.execute(
            _sessions.insert(),
            {
                "id": session_id,
                "deployment_id": task.deployment_id,
                "state": {},
                "created_at": now,
                "active_task_id": task.id,
            },
        )
        return session_id

    def note_published(self, task_ids: Iterable[str]) -> None:
        """The broker took these tasks' first steps (the outbox's notes)."""
        with self._db.single() as conn:
            conn.execute(sql.MARK_PUBLISHED, {"ids": sorted(task_ids), "now": utcnow()})

    def resend_overdue(self, cutoff: dt.datetime, send: Callable[[RunStep], bool]) -> list[str]:
        """Give ``send`` the first step of each task dispatched before ``cutoff`` and never
        noted as published, until it returns False; note the ones it sent as published, and
        return their ids. The tasks stay locked meanwhile, so no other sweeper sends them."""
        sent: list[str] = []
        with self._db.connect() as conn:
            for row in conn.execute(sql.OVERDUE, {"cutoff": cutoff}).all():
                if not send(first_step_again(conn, row)):
                    break
                sent.append(row.id)
            if sent:
                conn.execute(sql.MARK_PUBLISHED, {"ids": sent, "now": utcnow()})
        return sent

    def requeue_lost(self) -> int:
        """Queue again, unpublished, every dispatched task that has not ended, its unfinished
        runs marked lost; returns how many. For a broker that lost every message (the
        embedded one, with its process)."""
        with self._db.connect() as conn:
            conn.execute(LOSE_REQUEUED, lost_params(REQUEUED))
            return conn.execute(sql.REQUEUE_LOST).rowcount

    def renew(self, worker: str, task_ids: list[str] | None, at: dt.datetime) -> int:
        """A heartbeat of ``worker`` at ``at`` listed ``task_ids`` (None: a worker that lists
        none, whose every task is renewed): their leases run from ``at``. Returns how many."""
        if task_ids is not None and not task_ids:
            return 0
        with self._db.single() as conn:
            if task_ids is None:
                return conn.execute(sql.RENEW_ALL_OF, {"p_worker": worker, "at": at}).rowcount
            return conn.execute(sql.RENEW, {"ids": sorted(task_ids), "at": at}).rowcount

    def recover(
        self,
        lease: dt.timedelta,
        send: Callable[[RunStep], bool],
        *,
        not_before: dt.datetime | None = None,
    ) -> list[Recovered]:
        """Queue again each running or waiting task whose lease ran out, once ``send`` took
        its first step again (until it returns False); returns what was recovered.

        A lease runs out ``lease`` after its last renewal, by the clock of the heartbeats
        recorded: the newest one's time (never past this process's). While reports wait in
        the broker for a control plane that was down, that clock waits with them, so no task
        is taken from a worker whose heartbeats are merely not read yet. No lease runs out
        before ``not_before`` either: silence before then does not count. The tasks stay
        locked until their move is committed, so a report of theirs waits for it.
        """
        recovered: list[Recovered] = []
        with self._db.connect() as conn:
            newest = conn.scalar(sql.NEWEST_HEARTBEAT)
            if newest is None:
                return recovered
            cutoff = min(newest, utcnow()) - lease
            if not_before is not None and cutoff < not_before:
                return recovered
            for row in conn.execute(sql.EXPIRED, {"cutoff": cutoff}).all():
                if not send(first_step_again(conn, row)):
                    break
                params = {"task_id": row.id, "cutoff": cutoff, "now": utcnow()}
                if conn.execute(sql.RECOVER, params).rowcount:
                    conn.execute(
                        LOSE_RECOVERED, {"p_task_id": row.id, **lost_params(LEASE_EXPIRED)}
                    )
                    recovered.append(Recovered(row.id, TaskStatus(row.status), row.worker))
        return recovered

    def start(self, message: StepStarted) -> list[tuple[int, Any]]:
        """A worker took the task: record the attempt, note its inbox, and mark the task
        running if it still can be; returns the events clients sent in so far (``seq``,
        ``data``), which that worker has not had."""
        run = Run.started(message)
        with self._db.connect() as conn:
            if run is not None:
                self._attempts.record(conn, run)
            conn.execute(
                sql.START,
                {
                    "task_id": message.task_id,
                    "p_worker": message.worker,
                    "p_started_at": from_timestamp(message.at),
                    "p_inbox": message.inbox,
                    "p_run": message.run,
                },
            )
            inputs = conn.execute(sql.INPUTS, {"task_id": message.task_id})
            return [(row.seq, row.data) for row in inputs]

    def record_event(self, message: StepEvent) -> bool:
        """Store one streamed event, once whatever the deliveries; an ``InputRequiredEvent``
        makes the task await input. False if the task is gone, or the event is of a run
        that is not the task's current one."""
        with self._db.connect() as conn:
            run = conn.scalar(sql.TASK_RUN, {"task_id": message.task_id})
            if run is None or (message.run and message.run != run):
                return False  # gone, or an event of an earlier run
            conn.execute(self._insert_event, sql.event_row(message))
            if message.event.get("input_required"):
                conn.execute(sql.AWAIT_INPUT, {"task_id": message.task_id})
        return True

    def resume(self, task_id: str, event: dict[str, Any]) -> tuple[int, str | None, RunStep | None]:
        """Store an event a client sent into the task (LlamaDeploy's JSON of it, with its
        ``qualified_name``), and mark the task running if it awaited input; returns the
        event's number among the task's inputs, the inbox of the worker that runs it
        (None before a start is recorded), and for a parked task the step that resumes it
        (it is queued again, see ``parking``). :class:`Conflict` if the task ended."""
        qualified = str(event["qualified_name"])
        with self._db.connect() as conn:
            status, inbox = conn.execute(sql.TASK_FOR_INPUT, {"task_id": task_id}).one()
            if TaskStatus(status).terminal:
                raise Conflict(
                    f"task {task_id} has ended ({status}); it takes no more events",
                    errors={"task_id": task_id, "status": status},
                )
            seq = int(conn.scalar(sql.NEXT_INPUT_SEQ, {"task_id": task_id}))
            conn.execute(
                sql.events.insert(),
                {
                    "task_id": task_id,
                    "direction": EventDirection.IN.value,
                    "seq": seq,
                    "type": qualified.rsplit(".", 1)[-1][:200],
                    "qualified_name": qualified[:500],
                    "data": event,
                    "created_at": utcnow(),
                },
            )
            step = self._unpark(conn, task_id, parked_only=True)
            if step is None:
                conn.execute(sql.RESUME, {"task_id": task_id})
        return seq, inbox, step

    def finish(self, message: StepFinished, alongside: Alongside | None = None) -> Finished:
        """Record the outcome with the run's last events, unless the task already ended (a
        redelivery) or is gone; a session's task then passes the session's turn on. What
        ``alongside`` writes is written with it, whether or not it changed the task."""
        status = _status_of(message)
        retry_at = None
        if status is TaskStatus.RETRYING:
            retry_at = utcnow() + dt.timedelta(seconds=message.retry_in or 0.0)
        params: dict[str, Any] = {
            "p_task_id": message.task_id,
            "p_run": message.run,
            "p_retry_at": retry_at,
            "p_result": message.result,
            "p_error": message.error,
            "p_event_count": message.event_count,
            "p_finished_at": from_timestamp(message.at),
        }
        with_start = not message.started_reported
        if with_start:
            # A quick run: its start is recorded with its end, in the same statement.
            params["p_worker"] = message.worker
            params["p_started_at"] = from_timestamp(message.started_at)
        # On PostgreSQL that statement also records a quick run's attempt, if it changed
        # the task; other attempts are recorded in the transaction, or after it.
        in_statement = self._at_once and with_start
        run = Run.finished(message)
        if in_statement:
            assert run is not None and run.outcome is not None  # a quick run has a worker
            params.update(p_outcome=run.outcome.value, **lost_params(SUPERSEDED))
        events = [sql.event_row(StepEvent.decode(event)) for event in message.events]
        following, admitted = None, []
        # A session's next task, and a capped task's slot, are handed on in the same
        # transaction; a quick run's outcome on its own needs none on PostgreSQL, where it
        # is a single statement. That statement changes no capped task (nor an ended one):
        # the transaction tells them apart.
        passes_turn = message.keep_context and status.terminal
        changed = pending = None
        if alongside is not None and self._at_once:
            params.update(alongside.params())
        if in_statement and not passes_turn:
            with self._db.single() as conn:
                alone = self._with(self._finish_alone[status], alongside)
                changed, pending = self._record(conn, alone, params, events, run, with_start)
        if changed is None:
            with self._db.connect() as conn:
                if alongside is not None and not self._at_once:
                    alongside.write(conn)
                finish = self._with(self._finish[status, with_start], alongside)
                changed, pending = self._record(
                    conn, finish, params, events, run, with_start, transaction=True
                )
                if changed is not None:
                    freed: set[ServiceKey] = set()
                    if changed.cap_group is not None:
                        freed.add((changed.deployment_id, changed.service))
                    if passes_turn:
                        following = self._pass_turn(conn, changed.session_id, message, freed)
                    admitted = self._hand_off(conn, freed)
        if pending is not None:
            # A redelivery, or a second run (the task had ended): rare enough for a
            # transaction of its own.
            with self._db.connect() as conn:
                self._attempts.record(conn, pending)
        if changed is None:
            return Finished(None, following)
        return Finished(status, following, retry_at, tuple(admitted))

    def _with(
        self, finish: Update | Select[Any], alongside: Alongside | None
    ) -> Update | Select[Any]:
        """PostgreSQL: the outcome's statement ``finish`` with the CTE of ``alongside``."""
        if alongside is None or not isinstance(finish, Select):
            return finish
        key = (finish, alongside.cte)
        if key not in self._finish_with:
            self._finish_with[key] = finish.add_cte(alongside.cte)
        return self._finish_with[key]

    def _record(
        self,
        conn: Connection,
        finish: Update | Select[Any],
        params: dict[str, Any],
        events: list[dict[str, Any]],
        run: Run | None,
        with_start: bool,
        *,
        transaction: bool = False,
    ) -> tuple[Row[Any] | None, Run | None]:
        """Store an outcome (:meth:`_store_outcome`) and its run's attempt (:meth:`_note_run`);
        returns the changed task's row and the run to record in a transaction of its own."""
        changed = self._store_outcome(conn, finish, params, events)
        if changed is not None and changed.attempts > 1 and events:
            self._keep_last_event(conn, events[-1])
        pending = self._note_run(conn, run, changed, with_start, transaction=transaction)
        return changed, pending

    def _note_run(
        self,
        conn: Connection,
        run: Run | None,
        changed: Row[Any] | None,
        with_start: bool,
        *,
        transaction: bool,
    ) -> Run | None:
        """Record the finished run's attempt, unless the finish statement did (PostgreSQL,
        a quick run); returns the run if it needs a transaction, and ``conn`` is none."""
        if run is None:
            return None
        if changed is not None and with_start:
            # A new run, counted on the task by the finish statement
            if not self._at_once:
                self._attempts.add_new(conn, run, changed.attempts)
            return None
        if not transaction:
            return run
        self._attempts.record(conn, run)
        return None

    def _store_outcome(
        self,
        conn: Connection,
        finish: Update | Select[Any],
        params: dict[str, Any],
        events: list[dict[str, Any]],
    ) -> Row[Any] | None:
        """Apply ``finish`` and store the run's last events; returns the changed task's
        ``session_id`` and ``attempts``, in a row. Nothing is stored when no row changed."""
        if isinstance(finish, Select):  # PostgreSQL: one statement stores both
            params["p_events"] = [{**e, "created_at": e["created_at"].isoformat()} for e in events]
            return conn.execute(finish, params).first()
        changed = conn.execute(finish, params).first()
        if changed is not None:
            for event in events:
                conn.execute(self._insert_event, event)
        return changed

    def _keep_last_event(self, conn: Connection, event: dict[str, Any]) -> None:
        """Store the last event of a run that was not the task's first, if its number was
        taken by another event of an earlier run.

        Runs number their events from 0, and a number stored once is kept (redeliveries
        repeat the same events). A later run may stream others, though: one that had a
        person's answer waiting from the start can end before it asks again, and its
        ``StopEvent`` then comes under the number of the first run's question. The stream
        must still end with the outcome: it goes after the events stored."""
        stored = conn.execute(
            sql.STORED_OUTPUT_TYPE, {"task_id": event["task_id"], "seq": event["seq"]}
        ).scalar()
        if stored == event["type"]:
            return
        seq = conn.execute(sql.NEXT_OUTPUT_SEQ, {"task_id": event["task_id"]}).scalar_one()
        conn.execute(self._insert_event, {**event, "seq": seq})
        conn.execute(sql.SET_EVENT_COUNT, {"task_id": event["task_id"], "p_event_count": seq + 1})

    def _pass_turn(
        self, conn: Connection, session_id: str, message: StepFinished, freed: set[ServiceKey]
    ) -> RunStep | None:
        """Free the session (keeping the Context of a successful run) for its next task."""
        context = message.context if message.ok else None
        return self._pass_turn_of(conn, session_id, message.task_id, context, freed)

    def _pass_turn_of(
        self,
        conn: Connection,
        session_id: str,
        task_id: str,
        context: dict[str, Any] | None,
        freed: set[ServiceKey],
    ) -> RunStep | None:
        """Free the session of ``task_id`` (keeping ``context``, if any) for its next task;
        the next task's first step, if one waits. A next task of a capped service waits for
        a slot: its service is added to ``freed``, for the caller to hand a slot to."""
        row = pass_turn(conn, session_id, task_id, context)
        if row is None:
            return None
        if row.cap_group is not None:
            freed.add((row.deployment_id, row.service))
            return None
        return first_step(
            row,
            row.deployment_name,
            version_of(row),
            context=session_context(conn, session_id),
            keep_context=True,
        )

    def open_session(self, deployment: str) -> Session:
        """A new, empty session of ``deployment``."""
        with self._db.begin() as db:
            row = Session(deployment_id=find_deployment(db, deployment).id, state={})
            db.add(row)
        return row

    def close_session(self, deployment: str, session_id: str) -> None:
        """Close a session; its tasks and their history stay."""
        with self._db.begin() as db:
            found = find_session(db, find_deployment(db, deployment).id, session_id)
            found.deleted_at = utcnow()


def _status_of(message: StepFinished) -> TaskStatus:
    """The status a run's end report gives its task."""
    if message.stopped is not None:
        return _STOPPED.get(message.stopped, TaskStatus.FAILED)
    if message.ok:
        return TaskStatus.SUCCEEDED
    return TaskStatus.FAILED if message.retry_in is None else TaskStatus.RETRYING
