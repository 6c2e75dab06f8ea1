"""``/deployments/{d}/tasks``: run tasks, and read their status and results."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, request
from flask.views import MethodView
from flask_smorest.error_handler import ErrorSchema

from app.api import plane
from app.api.bodies import Blueprint, too_large
from app.api.schemas import (
    REPLAYED,
    AttemptSchema,
    CreateArgs,
    EventDefinitionSchema,
    EventsArgs,
    IdempotencyArgs,
    MomentSchema,
    PageArgs,
    RunArgs,
    SessionArgs,
    StepSchema,
    TaskDefinitionSchema,
    TaskDetailSchema,
    TaskResultSchema,
    TaskSchema,
)
from app.api.streams import (
    NDJSON,
    SSE,
    client_gone,
    last_event_id,
    ndjson_lines,
    sse_lines,
    stream_response,
)
from app.control.tasks import Submission, TaskPage, parse_input

blp = Blueprint(
    "tasks",
    __name__,
    url_prefix="/deployments/<string:deployment_name>/tasks",
    description="Tasks of a deployment.",
)

_STREAM_TYPES = [NDJSON, SSE]
_STREAM = {
    200: {
        "description": "The task's events as they happen, then the end of the stream.",
        "content": {NDJSON: {"schema": {}}, SSE: {"schema": {}}},
    }
}

#: The header of an answer replayed under an ``Idempotency-Key``, as documented.
_REPLAYED_HEADER = {
    REPLAYED: {
        "description": "`true` when an earlier request, the same under the same "
        "`Idempotency-Key`, stored the task: nothing was stored now.",
        "schema": {"type": "string", "enum": ["true"]},
    }
}

_RAW_RESULT = {
    200: {
        "description": "The task's result, as the JSON value the workflow returned.",
        "content": {"application/json": {"schema": {}}},
        "headers": _REPLAYED_HEADER,
    }
}

#: What a 409 of ``tasks/run`` and ``tasks/create`` means.
_CONFLICT = {
    "schema": ErrorSchema,
    "description": "The task id is taken, the session is busy (`multitask_strategy=reject`), "
    "or the `Idempotency-Key` was used with a different request; nothing changed.",
}


def _submission(
    deployment: str, body: dict[str, Any], args: dict[str, Any], headers: dict[str, Any]
) -> Submission:
    return Submission(
        deployment=deployment,
        input=parse_input(body.get("input"), plane().settings.max_nesting),
        service_id=body.get("service_id"),
        # The query wins: it is where LlamaDeploy's API server read it from.
        session_id=args.get("session_id") or body.get("session_id"),
        task_id=body.get("task_id"),
        multitask_strategy=args["multitask_strategy"],
        idempotency_key=headers.get("idempotency_key"),
        standalone=args.get("standalone", False),
        time_limit=body.get("time_limit"),
        queue_timeout=body.get("queue_timeout"),
    )


def _replayed(replayed: bool) -> dict[str, str]:
    """The headers of an answer, replayed or not."""
    return {REPLAYED: "true"} if replayed else {}


@blp.route("/run")
class TaskRun(MethodView):
    """Run a task and wait for its result."""

    @blp.arguments(RunArgs(), location="query")
    @blp.arguments(IdempotencyArgs(), location="headers")
    @blp.arguments(TaskDefinitionSchema())
    @blp.doc(responses=_RAW_RESULT)
    @blp.alt_response(409, **_CONFLICT)
    @blp.alt_response(413, **too_large("The task input"))
    def post(
        self,
        args: dict[str, Any],
        headers: dict[str, Any],
        body: dict[str, Any],
        deployment_name: str,
    ) -> Any:
        """Run a task and return its result when it ends (502 if it fails, 504 on timeout)."""
        ran = plane().tasks.run(
            _submission(deployment_name, body, args, headers), args["timeout"], client_gone()
        )
        response = current_app.json.response(ran.result)
        response.headers.update(_replayed(ran.replayed))
        return response


@blp.route("/create")
class TaskCreate(MethodView):
    """Queue a task without waiting."""

    @blp.arguments(CreateArgs(), location="query")
    @blp.arguments(IdempotencyArgs(), location="headers")
    @blp.arguments(TaskDefinitionSchema())
    @blp.response(200, TaskSchema, headers=_REPLAYED_HEADER)
    @blp.alt_response(409, **_CONFLICT)
    @blp.alt_response(413, **too_large("The task input"))
    def post(
        self,
        args: dict[str, Any],
        headers: dict[str, Any],
        body: dict[str, Any],
        deployment_name: str,
    ) -> Any:
        """Queue a task and return it with its ``task_id`` and ``session_id`` (a new
        session's, unless one was named or ``standalone``)."""
        submitted = plane().tasks.submit(_submission(deployment_name, body, args, headers))
        return submitted.task, _replayed(submitted.replayed)


@blp.route("")
class TaskList(MethodView):
    """The tasks of a deployment."""

    @blp.arguments(PageArgs(), location="query")
    @blp.response(200, TaskSchema(many=True))
    def get(self, args: dict[str, Any], deployment_name: str) -> Any:
        """List tasks, oldest first (or newest, by ``order``), a page at a time (``limit``,
        ``offset``), of one session, status or service if given."""
        page = TaskPage(
            session_id=args["session_id"],
            status=args["status"],
            service=args["service_id"],
            newest_first=args["order"] == "newest",
            limit=args["limit"],
            offset=args["offset"],
        )
        return plane().tasks.all(deployment_name, page)


@blp.route("/<string:task_id>")
class TaskItem(MethodView):
    """One task."""

    @blp.arguments(SessionArgs(), location="query")
    @blp.response(200, TaskDetailSchema)
    def get(self, args: dict[str, Any], deployment_name: str, task_id: str) -> Any:
        """Read a task: status, result or error, attempts and timestamps, and each run."""
        return plane().tasks.get(deployment_name, task_id, args["session_id"], with_attempts=True)


@blp.route("/<string:task_id>/attempts")
class TaskAttempts(MethodView):
    """A task's runs."""

    @blp.arguments(SessionArgs(), location="query")
    @blp.response(200, AttemptSchema(many=True))
    def get(self, args: dict[str, Any], deployment_name: str, task_id: str) -> Any:
        """Each run of a task, first first: worker, start, end, outcome and error."""
        cp = plane()
        return cp.tasks.get(
            deployment_name, task_id, args["session_id"], with_attempts=True
        ).attempt_history


@blp.route("/<string:task_id>/timeline")
class TaskTimeline(MethodView):
    """A task's life, step by step."""

    @blp.arguments(SessionArgs(), location="query")
    @blp.response(200, MomentSchema(many=True))
    def get(self, args: dict[str, Any], deployment_name: str, task_id: str) -> Any:
        """When the task was queued, each run's start and end (a failed run followed by
        another is ``retrying``), each question its workflow asked (``waiting_input``) and
        each event sent in, and how it ended; a retry still due comes last."""
        return plane().timelines.of(deployment_name, task_id, args["session_id"])


@blp.route("/<string:task_id>/steps")
class TaskSteps(MethodView):
    """A durable task's steps."""

    @blp.arguments(SessionArgs(), location="query")
    @blp.response(200, StepSchema(many=True))
    def get(self, args: dict[str, Any], deployment_name: str, task_id: str) -> Any:
        """Each step of a durable task's workflow that ended, in the order they ended: its
        start, end, attempt and outcome. Empty for a task of a service that is not durable
        (``celeriac: {durable: true}``), whose steps are not journaled."""
        cp = plane()
        cp.tasks.get(deployment_name, task_id, args["session_id"])  # 404s
        return cp.journal.steps(task_id)


@blp.route("/<string:task_id>/retry")
class TaskRetry(MethodView):
    """Run a task that failed again."""

    @blp.response(200, TaskSchema)
    @blp.alt_response(
        409,
        schema=ErrorSchema,
        description="The task did not fail, time out or get cancelled (its status is in "
        "`errors`), or its session is closed; nothing changed.",
    )
    def post(self, deployment_name: str, task_id: str) -> Any:
        """Queue a task that failed, timed out or was cancelled again, as a new run with
        the same ``task_id``, input and service; its result, error and end are cleared, its
        earlier runs stay in its attempts, and its events go on after theirs. A task of a
        session waits for its session's turn."""
        return plane().tasks.retry(deployment_name, task_id)


@blp.route("/<string:task_id>/cancel")
class TaskCancel(MethodView):
    """Cancel a task."""

    @blp.response(200, TaskSchema)
    @blp.alt_response(
        409,
        schema=ErrorSchema,
        description="The task has ended (its status is in `errors`); nothing changed.",
    )
    def post(self, deployment_name: str, task_id: str) -> Any:
        """Cancel a task that has not ended: it is ``cancelled`` at once. A queued (or
        retrying) task never starts, even if every process restarts; a running or waiting
        one is asked to stop (its workflow gets ``CancelledError`` at its next ``await``),
        then left behind after a grace period, and its worker slot is free; its session's
        next task takes its turn. Retry it to run it again."""
        return plane().tasks.cancel(deployment_name, task_id)


@blp.route("/<string:task_id>/results")
class TaskResults(MethodView):
    """A task's result in LlamaDeploy's shape."""

    @blp.arguments(SessionArgs(), location="query")
    @blp.response(200, TaskResultSchema)
    def get(self, args: dict[str, Any], deployment_name: str, task_id: str) -> Any:
        """The result once the task ended, ``null`` while it runs."""
        task = plane().tasks.get(deployment_name, task_id, args["session_id"])
        if not task.task_status.terminal:
            return current_app.json.response(None)
        return task


@blp.route("/<string:task_id>/events")
class TaskEvents(MethodView):
    """A task's event stream (out) and the events sent into it (in)."""

    @blp.arguments(EventsArgs(), location="query")
    @blp.doc(responses=_STREAM)
    def get(self, args: dict[str, Any], deployment_name: str, task_id: str) -> Response:
        """Follow the events the task's workflow streams, live, from the first (or after
        ``Last-Event-ID``) to its end: NDJSON, or server-sent events with
        ``Accept: text/event-stream``."""
        cp = plane()
        cp.tasks.get(deployment_name, task_id, args["session_id"])  # 404 before streaming
        after = _resume_point(args["last_event_id"])
        events = cp.events.follow(task_id, after=after)
        if request.accept_mimetypes.best_match(_STREAM_TYPES) == SSE:
            return stream_response(sse_lines(events, task_id), SSE)
        return stream_response(ndjson_lines(events, raw=args["raw_event"]), NDJSON)

    @blp.arguments(SessionArgs(), location="query")
    @blp.arguments(EventDefinitionSchema())
    @blp.response(200, EventDefinitionSchema)
    @blp.alt_response(413, **too_large("The event"))
    def post(
        self, args: dict[str, Any], body: dict[str, Any], deployment_name: str, task_id: str
    ) -> Any:
        """Send an event (e.g. a HumanResponseEvent) into the running task."""
        plane().events.send(deployment_name, task_id, body["event_obj_str"], args["session_id"])
        return body


def _resume_point(query_value: int | None) -> int:
    """Where to resume: the ``Last-Event-ID`` header, else the ``last_event_id`` query."""
    header = last_event_id()
    if header is not None:
        return header
    return -1 if query_value is None else query_value
