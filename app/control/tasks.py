"""Tasks: submit (commit, then dispatch), wait for, and read the runs of a deployment."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from sqlalchemy import bindparam, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import selectinload

from app.control.deployments import find as find_deployment
from app.control.lifecycle import Lifecycle, MultitaskStrategy, NewTask, Replay, RequestKey
from app.control.outbox import Outbox
from app.control.routing import first_step, route
from app.control.stops import Stops
from app.control.waiter import Abandoned, Outcome, TaskWaiter
from app.db import Database, is_outage
from app.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    TaskFailed,
    TaskTimeout,
    TooLarge,
    Unavailable,
)
from app.models import Deployment, Task, TaskStatus
from app.models.base import new_id, table_of
from config.errors import NestedTooDeeply
from config.limits import json_size, load_json, nesting_depth
from workers.protocol import RunStep

log = logging.getLogger(__name__)

#: Nesting allowed where no setting is at hand (``Settings.max_nesting``'s default).
DEFAULT_NESTING = 100


@dataclass(frozen=True)
class Submission:
    """What a client asks to run."""

    deployment: str
    input: dict[str, Any]
    service_id: str | None = None
    session_id: str | None = None
    task_id: str | None = None
    multitask_strategy: MultitaskStrategy = MultitaskStrategy.ENQUEUE
    #: The client's ``Idempotency-Key``: the same request again under it gets the same task.
    idempotency_key: str | None = None
    #: Seconds the task's run may take, and may wait in the queue; each replaces its
    #: service's ``time-limit`` and ``queue-timeout`` for this task.
    time_limit: float | None = None
    queue_timeout: float | None = None
    #: With no session id, the task runs on its own, in no session (as ``tasks/run``'s
    #: do), instead of opening a new one.
    standalone: bool = False


#: The routes a request under an idempotency key may come by: a key used on one and then on
#: the other names two different requests.
Route = Literal["create", "run"]


def request_hash(route: Route, request: Submission) -> str:
    """What makes two requests under one key the same: the route, and what the task is asked
    to be (its input as a JSON object, whatever its keys' order or its sending as a string,
    the service, the task id and the session as sent); hex SHA-256. The ``timeout`` and
    ``multitask_strategy`` say how to wait or queue, not what to run: they are left out."""
    asked = {
        "route": route,
        "input": request.input,
        "service_id": request.service_id,
        "task_id": request.task_id,
        "session_id": request.session_id,
        "time_limit": request.time_limit,
        "queue_timeout": request.queue_timeout,
    }
    if request.standalone:  # (left out otherwise: keys stored before it existed still match)
        asked["standalone"] = True
    canonical = json.dumps(asked, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def task_controls(spec: dict[str, Any], service: str, request: Submission) -> dict[str, Any] | None:
    """A task's controls: its service's (the ``celeriac`` block of its entry in the
    deployment file), with the time limit and queue wait the client set for it."""
    controls = dict(spec.get("services", {}).get(service, {}).get("celeriac") or {})
    controls.pop("concurrency", None)  # kept by the control plane, not by the task's run
    if request.time_limit is not None:
        controls["time-limit"] = request.time_limit
    if request.queue_timeout is not None:
        controls["queue-timeout"] = request.queue_timeout
    return controls or None


def service_concurrency(spec: dict[str, Any], service: str) -> dict[str, Any] | None:
    """The concurrency cap of a service (the ``concurrency`` mapping of its ``celeriac``
    block), which the control plane keeps: see ``app.control.lifecycle.caps``."""
    controls = spec.get("services", {}).get(service, {}).get("celeriac") or {}
    concurrency: dict[str, Any] | None = controls.get("concurrency")
    return concurrency


@dataclass(frozen=True)
class TaskPage:
    """Which of a deployment's tasks to list, in which order, and which page of them."""

    session_id: str | None = None
    status: TaskStatus | None = None
    service: str | None = None
    #: Newest first (a dashboard's order) instead of oldest first (LlamaDeploy's).
    newest_first: bool = False
    limit: int = 100
    offset: int = 0


class Submitted(NamedTuple):
    """A task submitted: the one stored, or the one an earlier request, the same under the
    same idempotency key, stored (``replayed``)."""

    task: Task
    replayed: bool = False


class Ran(NamedTuple):
    """What ``tasks/run`` answers: the task's result, and whether an earlier request, the
    same under the same idempotency key, ran the task (``replayed``)."""

    result: Any
    replayed: bool = False


def parse_input(raw: Any, max_depth: int = DEFAULT_NESTING) -> dict[str, Any]:
    """Task input as LlamaDeploy sends it (a JSON string of kwargs) or as a JSON object."""
    if raw is None or raw == "":
        return {}
    return json_object(
        raw,
        "input",
        what="task input",
        must_be="a JSON object of keyword arguments",
        expected="an object of keyword arguments",
        max_depth=max_depth,
    )


def json_object(
    raw: Any,
    field: str,
    *,
    what: str,
    must_be: str,
    expected: str,
    max_depth: int = DEFAULT_NESTING,
) -> dict[str, Any]:
    """A JSON object sent as is or as a JSON string (as LlamaDeploy's clients send it);
    InvalidInput naming ``field`` otherwise, or if it nests deeper than ``max_depth``."""
    if isinstance(raw, str):
        try:
            raw = load_json(raw, max_depth)
        except json.JSONDecodeError as exc:
            raise InvalidInput(
                f"{what} is not valid JSON",
                errors={field: [f"not valid JSON: {exc.msg} at position {exc.pos}"]},
            ) from exc
        except NestedTooDeeply as exc:
            raise InvalidInput(f"{what} is nested too deeply", errors={field: [str(exc)]}) from exc
    if not isinstance(raw, dict):
        raise InvalidInput(
            f"{what} must be {must_be}",
            errors={field: [f"expected {expected}, got {type(raw).__name__}"]},
        )
    return raw


def check_input(value: dict[str, Any], max_bytes: int, max_depth: int) -> None:
    """TooLarge (413) or InvalidInput (422) for task input over the size or nesting bound."""
    if nesting_depth(value, max_depth) > max_depth:
        reason = f"{NestedTooDeeply(max_depth)} (CELERIAC_MAX_NESTING)"
        raise InvalidInput("task input is nested too deeply", errors={"input": [reason]})
    size = json_size(value)
    if size > max_bytes:
        raise TooLarge(
            "task input is too large",
            errors={
                "input": [
                    f"{size:,} bytes of JSON; at most {max_bytes:,} (CELERIAC_MAX_INPUT_BYTES)"
                ]
            },
        )


_tasks = table_of(Task)
_deployments = table_of(Deployment)
_OUTCOME = select(_tasks.c.status, _tasks.c.result, _tasks.c.error).where(
    _tasks.c.id == bindparam("task_id")
)
_DEPLOYMENT = select(_deployments.c.id, _deployments.c.version, _deployments.c.spec).where(
    _deployments.c.name == bindparam("name")
)


@dataclass(frozen=True)
class _Target:
    """What submitting needs of a deployment: its row, its version and its routing."""

    id: int
    version: int
    spec: dict[str, Any]


class _Refused(Exception):
    """The task row was not inserted (a used id, or a deployment changed meanwhile)."""


class Tasks:
    """Submit, run, wait for and read tasks."""

    def __init__(
        self,
        db: Database,
        lifecycle: Lifecycle,
        outbox: Outbox,
        waiter: TaskWaiter,
        stops: Stops,
        run_timeout: float,
        *,
        max_input_bytes: int = 1_048_576,
        max_nesting: int = DEFAULT_NESTING,
    ) -> None:
        self._max_input_bytes = max_input_bytes
        self._max_nesting = max_nesting
        self._db = db
        self._lifecycle = lifecycle
        self._outbox = outbox
        self._waiter = waiter
        self._stops = stops
        self._run_timeout = run_timeout
        # Deployments by name, as last read. Every insert checks that the deployment still
        # has this id and version, so a stale entry can refuse a task but never misroute it.
        self._targets: dict[str, _Target] = {}

    def submit(
        self, request: Submission, *, single_use_session: bool = False, route: Route = "create"
    ) -> Submitted:
        """Store the task as queued, commit, then send its first step to its service's queue.

        Without a session id the task gets a new session, unless ``single_use_session``
        (``tasks/run``) or the request is ``standalone``: then it has none.
        With an idempotency key, a request the same as an earlier one under the key (by
        ``route`` too) gets the earlier one's task, replayed, and stores nothing.
        """
        check_input(request.input, self._max_input_bytes, self._max_nesting)
        key = None
        if request.idempotency_key is not None:
            key = RequestKey(request.idempotency_key, request_hash(route, request))
        target = self._target(request.deployment)
        try:
            return self._submit(request, key, target, single_use_session or request.standalone)
        except _Refused:
            pass
        # Tell a used task id from a deployment changed since it was read.
        self.forget(request.deployment)
        fresh = self._target(request.deployment)
        if fresh == target:
            raise Conflict(f"task id {request.task_id!r} is already used")
        try:
            return self._submit(request, key, fresh, single_use_session or request.standalone)
        except _Refused:
            raise Conflict(
                f"task id {request.task_id!r} is already used, or deployment "
                f"{request.deployment!r} changed while the task was sent; send it again"
            ) from None

    def forget(self, deployment: str) -> None:
        """Drop what is known of a deployment this process reloaded or deleted. (Another
        process's changes are caught by the insert's check, but SQLite may give a deployment
        made again the id of a deleted one, at the same version.)"""
        self._targets.pop(deployment, None)

    def _target(self, name: str) -> _Target:
        target = self._targets.get(name)
        if target is None:
            with self._db.peek() as conn:
                found = conn.execute(_DEPLOYMENT, {"name": name}).first()
            if found is None:
                raise NotFound(f"deployment {name!r} not found")
            target = self._targets[name] = _Target(*found)
        return target

    def _submit(
        self,
        request: Submission,
        key: RequestKey | None,
        target: _Target,
        single_use_session: bool,
    ) -> Submitted:
        service = route(request.deployment, target.spec, request.service_id)
        new = NewTask(
            id=request.task_id or new_id(),
            deployment_id=target.id,
            version=target.version,
            service=service,
            input=request.input,
            session_id=request.session_id,
            controls=task_controls(target.spec, service, request),
            concurrency=service_concurrency(target.spec, service),
        )
        try:
            inserted = self._lifecycle.insert(
                new,
                strategy=request.multitask_strategy,
                single_use_session=single_use_session,
                key=key,
            )
        except DBAPIError as exc:
            if not (is_outage(exc) and exc.connection_invalidated):
                raise
            # Lost with the insert on its way (or its commit): the database may have stored
            # the task all the same, and then the control plane sends it. The client must
            # know which task to look for, or to send again under the same id (or key).
            again = (
                f"with task_id {new.id!r} (409 if it was stored)"
                if key is None
                else "under the same Idempotency-Key (the stored task, if it was stored)"
            )
            raise Unavailable(
                f"the database was lost while task {new.id} was stored: it may be stored, and "
                f"then it runs. Send it again {again}, "
                f"or read it later from /deployments/{request.deployment}/tasks/{new.id}",
                errors={"task_id": new.id, "status": "unknown", "published": False},
            ) from exc
        if inserted is None:
            raise _Refused
        if isinstance(inserted, Replay):
            return Submitted(self.get(request.deployment, inserted.task_id), replayed=True)
        task, turn = inserted
        if turn.run_now:
            self.dispatch(
                first_step(
                    task,
                    request.deployment,
                    target.version,
                    context=turn.context,
                    keep_context=task.session_id is not None,
                )
            )
        return Submitted(task)

    def retry(self, deployment: str, task_id: str) -> Task:
        """Run again a task that failed (or was cancelled): queued as a new attempt under the
        same id, then its first step is sent as a new task's is (or when its session's turn
        comes). Returns the task as queued; :class:`Conflict` for any other status."""
        with self._db.peek() as conn:
            found = conn.execute(_DEPLOYMENT, {"name": deployment}).first()
        if found is None:
            raise NotFound(f"deployment {deployment!r} not found")
        try:
            step = self._lifecycle.retry(found.id, task_id)
        except NotFound:
            raise NotFound(f"task {task_id!r} not found in deployment {deployment!r}") from None
        if step is not None:
            self.dispatch(step)
        return self.get(deployment, task_id)

    def cancel(self, deployment: str, task_id: str) -> Task:
        """Cancel a task that has not ended: it is ``cancelled`` at once, a queued one never
        starts and a running one is stopped (see ``app.control.stops``), and its session's
        next task takes its turn. Returns the task; :class:`Conflict` if it had ended."""
        with self._db.peek() as conn:
            found = conn.execute(_DEPLOYMENT, {"name": deployment}).first()
        if found is None:
            raise NotFound(f"deployment {deployment!r} not found")
        try:
            ended = self._lifecycle.cancel(found.id, task_id)
        except NotFound:
            raise NotFound(f"task {task_id!r} not found in deployment {deployment!r}") from None
        self._stops.ended(ended, "cancelled")
        return self.get(deployment, task_id)

    def purge(self, deployment: str, task_id: str) -> None:
        """Delete a task with its events and runs, cancelling it first if it has not
        ended (the workflow server's ``cancel`` with ``purge``)."""
        with contextlib.suppress(Conflict):  # it had ended
            self.cancel(deployment, task_id)
        with self._db.peek() as conn:
            found = conn.execute(_DEPLOYMENT, {"name": deployment}).first()
        if found is None or not self._lifecycle.delete(found.id, task_id):
            raise NotFound(f"task {task_id!r} not found in deployment {deployment!r}")

    def dispatch(self, step: RunStep) -> None:
        """Send a step; if the broker does not take it, the task stays queued for the sweep.

        A publish that fails may still have landed: the broker can store a message and go
        away before it answers, and Kombu's retries then end on a refused connection. So the
        task is never failed here: it stays queued, not noted as published, and the
        control plane sends it again ``redispatch_after`` seconds later, once the broker takes
        it (the step may then run twice, and is recorded once). The :class:`Unavailable`
        raised names the task, so that the client waits for it instead of sending it again."""
        try:
            self._outbox.send(step)
        except Unavailable as exc:
            task_id = step.task_id
            raise Unavailable(
                f"{exc.message}; task {task_id} is stored and the control plane sends it once "
                "the broker takes it. Do not send it again: read it later",
                errors={"task_id": task_id, "status": "queued", "published": False},
            ) from exc

    def run(
        self,
        request: Submission,
        timeout: float | None = None,
        abandoned: Callable[[], bool] | None = None,
    ) -> Ran:
        """Submit and wait for the end; returns the task's result, or raises
        :class:`TaskFailed` if it failed and :class:`TaskTimeout` if it runs too long or
        ``abandoned`` says the client left (the task runs on either way). A replay waits
        for the earlier request's task as for its own."""
        submitted = self.submit(request, single_use_session=True, route="run")
        task_id = submitted.task.id
        limit = self._run_timeout if timeout is None else timeout
        try:
            result = self._wait(
                request, task_id, limit, abandoned, just_queued=not submitted.replayed
            )
            return Ran(result, submitted.replayed)
        except Abandoned:
            log.info("task %s: its client disconnected; it runs on, unwatched", task_id)
            raise TaskTimeout(
                f"stopped waiting for task {task_id}: the client disconnected; it runs on",
                errors={"task_id": task_id},
            ) from None
        except DBAPIError as exc:
            if not is_outage(exc):
                raise
            # The task is in the broker's hands: it runs whatever this answer says.
            raise Unavailable(
                f"the database became unavailable while waiting for task {task_id}, which "
                "was sent and runs: do not send it again; read it later from "
                f"/deployments/{request.deployment}/tasks/{task_id}",
                errors={"task_id": task_id, "published": True},
            ) from exc

    def _wait(
        self,
        request: Submission,
        task_id: str,
        limit: float,
        abandoned: Callable[[], bool] | None,
        *,
        just_queued: bool,
    ) -> Any:
        """Wait for a sent task's end, as :meth:`run` answers it."""

        def ended() -> Outcome | None:
            # One read per look, of what the answer needs.
            with self._db.peek() as conn:
                row = conn.execute(_OUTCOME, {"task_id": task_id}).first()
            if row is None:  # deleted with its deployment meanwhile
                raise NotFound(f"task {task_id!r} not found in deployment {request.deployment!r}")
            return Outcome(*row) if TaskStatus(row.status).terminal else None

        # A task only just queued: wait before the first look (the recorder may pass the
        # outcome on, and then nothing needs reading). A replayed one may have ended.
        outcome = self._waiter.wait(
            task_id, limit, ended, check_first=not just_queued, abandoned=abandoned
        )
        if outcome is None:
            status = self.get(request.deployment, task_id).status
            raise TaskTimeout(
                f"task {task_id} did not finish within {limit:g} s; it is still {status}; "
                f"read it later from /deployments/{request.deployment}/tasks/{task_id}",
                errors={"task_id": task_id, "status": status},
            )
        if outcome.status != TaskStatus.SUCCEEDED:
            error = outcome.error or {}
            raise TaskFailed(
                f"task {task_id} {outcome.status}: {error.get('message', 'no error message')}",
                errors={"task_id": task_id, "status": outcome.status, "error": error},
            )
        return outcome.result

    def get(
        self,
        deployment: str,
        task_id: str,
        session_id: str | None = None,
        *,
        with_attempts: bool = False,
    ) -> Task:
        """One task of the deployment (and of the session, if given), or :class:`NotFound`;
        with its ``attempt_history`` loaded if ``with_attempts``."""
        with self._db.read() as db:
            query = (
                select(Task)
                .join(Deployment)
                .where(Task.id == task_id, Deployment.name == deployment)
            )
            if with_attempts:
                query = query.options(selectinload(Task.attempt_history))
            task = db.scalar(query)
            if task is None:
                find_deployment(db, deployment)  # a 404 that names what is missing
                raise NotFound(f"task {task_id!r} not found in deployment {deployment!r}")
            if session_id and task.session_id != session_id:
                raise NotFound(f"task {task_id!r} not found in session {session_id!r}")
            return task

    def all(self, deployment: str, page: TaskPage | None = None) -> list[Task]:
        """A deployment's tasks that match ``page``'s filters, a page at a time."""
        page = page or TaskPage()
        with self._db.read() as db:
            query = select(Task).where(Task.deployment_id == find_deployment(db, deployment).id)
            if page.session_id:
                query = query.where(Task.session_id == page.session_id)
            if page.status is not None:
                query = query.where(Task.status == page.status.value)
            if page.service:
                query = query.where(Task.service == page.service)
            order = (
                (Task.created_at.desc(), Task.id.desc())
                if page.newest_first
                else (
                    Task.created_at,
                    Task.id,
                )
            )
            query = query.order_by(*order).limit(page.limit).offset(page.offset)
            return list(db.scalars(query))
