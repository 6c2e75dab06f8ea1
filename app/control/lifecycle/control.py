"""Task control: the lifecycle's operations that a client or a deadline asks for, beyond a
run's own reports: retry (by hand, or by policy once a backoff ran out), cancel, time out,
delete, and the list of stopped runs that workers must never start."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Connection, Insert, Update

from app.control.lifecycle import statements as sql
from app.control.lifecycle.attempts import LOSE_RECOVERED, REQUEUED, lost_params
from app.control.lifecycle.caps import Caps, ServiceKey
from app.control.lifecycle.steps import expiry, first_step_again, timestamp_of
from app.control.lifecycle.turns import MultitaskStrategy, Turn, take_turn
from app.control.routing import first_step
from app.db import Database
from app.errors import Conflict, NotFound
from app.models import Operation, TaskStatus
from app.models.base import utcnow
from workers.protocol import RunStep

#: The error of a task a client cancelled.
CANCELLED_ERROR = {"type": "celeriac.Cancelled", "message": "the task was cancelled"}


@dataclass(frozen=True)
class Ended:
    """Tasks ended early (cancelled, timed out): their runs, for workers to stop, and the
    first steps of the session tasks whose turn it now is and of the tasks given the cap
    slots they freed."""

    runs: list[tuple[str, int]]
    following: list[RunStep]
    #: The inbox of each run's worker, where known (``inbox``, ``task_id``, ``run``): the
    #: stop goes there too, for a transport whose broadcasts do not reach workers (SQS).
    inboxes: list[tuple[str, str, int]] = field(default_factory=list)


class TaskControl:
    """The control operations of :class:`~app.control.lifecycle.operations.Lifecycle` (its
    base class: they share its connections, statements and cap keeper)."""

    _db: Database
    _caps: Caps
    _insert_stopped: Insert

    def _admits(
        self, conn: Connection, deployment_id: int, service: str, group: str | None
    ) -> bool:
        raise NotImplementedError

    def _hand_off(self, conn: Connection, freed: Iterable[ServiceKey]) -> list[RunStep]:
        raise NotImplementedError

    def _pass_turn_of(
        self,
        conn: Connection,
        session_id: str,
        task_id: str,
        context: dict[str, Any] | None,
        freed: set[ServiceKey],
    ) -> RunStep | None:
        raise NotImplementedError

    def retry(self, deployment_id: int, task_id: str) -> RunStep | None:
        """Queue again a task of the deployment that failed (or was cancelled), as a new
        attempt with the same id, input and service; returns its first step to send, or
        None while it waits for its session's turn or a slot of its service's cap (it takes
        them like a new task).

        :class:`NotFound` for an unknown task; :class:`Conflict`, with nothing changed, for a
        task the table does not let a retry move, or whose session was closed.
        """
        with self._db.connect() as conn:
            row = conn.execute(
                sql.TO_RETRY, {"task_id": task_id, "deployment_id": deployment_id}
            ).first()
            if row is None:
                raise NotFound(f"task {task_id!r} not found")
            if TaskStatus(row.status) not in TaskStatus.QUEUED.sources(Operation.RETRY):
                raise Conflict(
                    f"task {task_id} is {row.status}; only a task that failed or was "
                    "cancelled can be retried",
                    errors={"task_id": task_id, "status": row.status},
                )
            turn = Turn(run_now=True, context=None)
            if row.session_id:
                try:
                    turn = take_turn(
                        conn, row.session_id, deployment_id, task_id, MultitaskStrategy.ENQUEUE
                    )
                except NotFound:
                    raise Conflict(
                        f"task {task_id}'s session {row.session_id} is closed; its tasks "
                        "cannot run again",
                        errors={"task_id": task_id, "session_id": row.session_id},
                    ) from None
            if turn.run_now and not self._admits(conn, deployment_id, row.service, row.cap_group):
                turn = Turn(run_now=False, context=None)
            now = utcnow()
            expires_at = expiry(row.controls, now)
            params = {
                "task_id": task_id,
                "p_dispatched_at": now if turn.run_now else None,
                "p_expires_at": expires_at,
            }
            first_seq, run, _pinned = conn.execute(sql.RETRY, params).one()
            # Close any run still open (a lost one): the retry begins the next
            conn.execute(LOSE_RECOVERED, {"p_task_id": task_id, **lost_params(REQUEUED)})
        if not turn.run_now:
            return None
        step = first_step(
            row,
            row.deployment_name,
            row.version,
            context=turn.context,
            keep_context=bool(row.session_id),
        )
        return replace(step, first_seq=first_seq, run=run, expires_at=timestamp_of(expires_at))

    def send_due(self, now: dt.datetime, send: Callable[[RunStep], bool]) -> list[str]:
        """Queue again each retrying task whose backoff ran out by ``now``, as a new run,
        then give ``send`` their first steps, until it returns False (those not sent stay
        queued, dispatched and unpublished, for the outbox's sweep); returns the ids sent. A
        retrying task keeps its session's turn: its step goes at once, unless its service's
        cap has no slot free (it then waits for one, queued, unsent).

        The moves are committed before any step is sent. A quick run reports its end within
        milliseconds, and on PostgreSQL a report read while the move is uncommitted sees the
        task still ``retrying`` at its earlier run: it would change nothing (the row does
        not match, so the report does not even wait for the lock), and the task would stay
        queued for ever."""
        steps: list[RunStep] = []
        with self._db.connect() as conn:
            rows = conn.execute(sql.DUE, {"now": now}).all()
            self._caps.lock(conn, [(r.deployment_id, r.service) for r in rows if r.cap_group])
            for row in rows:
                sends = self._admits(conn, row.deployment_id, row.service, row.cap_group)
                params = {
                    "task_id": row.id,
                    "now": now,
                    "p_dispatched_at": now if sends else None,
                    "p_expires_at": expiry(row.controls, now),
                }
                moved = conn.execute(sql.RETRY_DUE, params).first()
                if moved is None:
                    continue
                conn.execute(LOSE_RECOVERED, {"p_task_id": row.id, **lost_params(REQUEUED)})
                if not sends:
                    continue
                step = first_step_again(conn, row)
                steps.append(
                    replace(
                        step,
                        # Pinned again: the new run starts over on the current version.
                        version=moved.pinned_version or row.version,
                        first_seq=moved.first_seq,
                        run=moved.run,
                        expires_at=timestamp_of(params["p_expires_at"]),
                    )
                )
        sent: list[str] = []
        for step in steps:
            if not send(step):
                break  # queued and not published: the outbox's sweep sends it
            sent.append(step.task_id)
        return sent

    def next_due(self) -> dt.datetime | None:
        """When the next retrying task is due, if any."""
        with self._db.peek() as conn:
            return conn.scalar(sql.NEXT_DUE)

    def cancel(self, deployment_id: int, task_id: str) -> Ended:
        """Cancel a task of the deployment that has not ended: it ends ``cancelled`` at
        once, its run is recorded as stopped (workers never start it, and stop it if it
        runs), and its session's next task takes its turn.

        :class:`NotFound` for an unknown task; :class:`Conflict`, with nothing changed, for
        one that has ended."""
        with self._db.connect() as conn:
            row = conn.execute(
                sql.TO_CANCEL, {"task_id": task_id, "deployment_id": deployment_id}
            ).first()
            if row is None:
                raise NotFound(f"task {task_id!r} not found")
            if TaskStatus(row.status) not in TaskStatus.CANCELLED.sources(Operation.CANCEL):
                raise Conflict(
                    f"task {task_id} has ended ({row.status}); only a task that has not "
                    "ended can be cancelled",
                    errors={"task_id": task_id, "status": row.status},
                )
            return self._end_early(conn, [row], sql.CANCEL, CANCELLED_ERROR, utcnow())

    def cancel_all(self, deployment_id: int) -> list[tuple[str, int]]:
        """Cancel every task of the deployment that has not ended (it is being deleted);
        returns their runs, recorded as stopped, for workers to stop. (No session's turn nor
        cap slot is handed on: every task that could take one is cancelled too.)"""
        with self._db.connect() as conn:
            rows = conn.execute(sql.UNFINISHED_OF, {"deployment_id": deployment_id}).all()
            error = {**CANCELLED_ERROR, "message": "the task's deployment was deleted"}
            now = utcnow()
            params = [{"task_id": r.id, "p_run": r.run, "p_error": error, "now": now} for r in rows]
            if params:
                conn.execute(sql.CANCEL, params)
                self._note_stopped(conn, [(r.id, r.run) for r in rows], now)
        return [(r.id, r.run) for r in rows]

    def time_out_waiting(self, now: dt.datetime) -> Ended:
        """End ``timed_out`` every task still queued past its allowed wait."""
        with self._db.connect() as conn:
            rows = conn.execute(sql.EXPIRED_IN_QUEUE, {"now": now}).all()
            error = {
                "type": "celeriac.QueueTimeout",
                "message": "the task waited in the queue past its queue-timeout: it was "
                "not started",
            }
            return self._end_early(conn, rows, sql.TIME_OUT, error, now)

    def time_out_overrun(self, now: dt.datetime, grace: float) -> Ended:
        """End ``timed_out`` every run past its time limit by more than ``grace`` seconds
        (its worker stops a run at the limit, and reports it; this catches a worker that
        could not), and every parked run past its limit (no worker holds it to stop it)."""
        with self._db.connect() as conn:
            rows = [
                row
                for row in conn.execute(sql.RUNNING_WITH_LIMITS).all()
                if (limit := (row.controls or {}).get("time-limit")) is not None
                and row.started_at + dt.timedelta(seconds=limit + (0.0 if row.parked_at else grace))
                < now
            ]
            error = {
                "type": "celeriac.TimeLimitExceeded",
                "message": "the run went past its time-limit: parked, waiting for input, or on "
                "a worker that did not stop it",
            }
            return self._end_early(conn, rows, sql.TIME_OUT, error, now)

    def _end_early(
        self,
        conn: Connection,
        rows: Iterable[Any],
        statement: Update,
        error: dict[str, Any],
        now: dt.datetime,
    ) -> Ended:
        """End each task of ``rows`` (``id``, ``run``, ``session_id``, and its service's and
        cap group) by ``statement``, note its run stopped, and pass its session's turn and
        its cap slot on."""
        runs: list[tuple[str, int]] = []
        inboxes: list[tuple[str, str, int]] = []
        following: list[RunStep] = []
        freed: set[ServiceKey] = set()
        for row in rows:
            params = {"task_id": row.id, "p_run": row.run, "p_error": error, "now": now}
            if not conn.execute(statement, params).rowcount:
                continue
            runs.append((row.id, row.run))
            if getattr(row, "inbox", None):
                inboxes.append((row.inbox, row.id, row.run))
            if row.cap_group is not None:
                freed.add((row.deployment_id, row.service))
            if row.session_id:
                step = self._pass_turn_of(conn, row.session_id, row.id, None, freed)
                if step is not None:
                    following.append(step)
        self._note_stopped(conn, runs, now)
        following += self._hand_off(conn, freed)  # after every session's: the lock order
        return Ended(runs, following, inboxes)

    def _note_stopped(
        self, conn: Connection, runs: list[tuple[str, int]], now: dt.datetime
    ) -> None:
        if runs:
            conn.execute(
                self._insert_stopped,
                [{"task_id": task_id, "run": run, "stopped_at": now} for task_id, run in runs],
            )

    def delete(self, deployment_id: int, task_id: str) -> bool:
        """Delete an ended task of the deployment with its events and runs (a session it
        belonged to stays); False if there is no such ended task."""
        with self._db.connect() as conn:
            return bool(
                conn.execute(
                    sql.DELETE_ENDED, {"task_id": task_id, "deployment_id": deployment_id}
                ).rowcount
            )

    def stopped_runs(self, kept: dt.timedelta, limit: int) -> list[tuple[str, int]]:
        """The runs stopped within ``kept`` (newest first, ``limit`` at most), which workers
        must never start; older ones are purged."""
        cutoff = utcnow() - kept
        with self._db.connect() as conn:
            conn.execute(sql.PURGE_STOPPED, {"cutoff": cutoff})
            rows = conn.execute(sql.STOPPED_SINCE, {"cutoff": cutoff, "limit": limit}).all()
        return [(row.task_id, row.run) for row in rows]
