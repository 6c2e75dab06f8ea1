"""LlamaIndex's workflow-server API per deployment, for ``llama-agents-client``.

Mounted at ``/deployments/{d}/`` as LlamaIndex's appserver mounts it: a workflow is a service
of the deployment, a handler is a task (handler id = task id).
"""

from __future__ import annotations

from typing import Any

from flask import Response
from flask.views import MethodView
from flask_smorest.error_handler import ErrorSchema

from app.api import plane
from app.api.bodies import Blueprint, too_large
from app.api.streams import (
    NDJSON,
    SSE,
    client_gone,
    envelope_lines,
    last_event_id,
    stream_response,
)
from app.api.workflow_schemas import (
    CancelArgs,
    CancelledSchema,
    HandlerFilterArgs,
    HandlerListSchema,
    HandlerSchema,
    HealthSchema,
    RunArgs,
    RunBodySchema,
    SendEventBodySchema,
    SentSchema,
    StreamArgs,
    WorkflowEventsSchema,
    WorkflowGraphSchema,
    WorkflowListSchema,
    WorkflowSchemaSchema,
)
from app.control.handlers import event_obj_str, start_input
from app.errors import InvalidInput, WorkflowNotDescribed

blp = Blueprint(
    "workflow_server",
    __name__,
    url_prefix="/deployments/<string:deployment_name>",
    description="LlamaIndex's workflow-server API (llama-agents-client): workflows are the "
    "deployment's services, handlers its tasks.",
)

_STREAM = {
    200: {
        "description": "Event envelopes as they happen, until the handler ends.",
        "content": {SSE: {"schema": {}}, NDJSON: {"schema": {}}},
    },
    204: {"description": "The handler ended and no event is left after `after_sequence`."},
}


@blp.route("/health")
class Health(MethodView):
    """Is the deployment served."""

    @blp.response(200, HealthSchema)
    def get(self, deployment_name: str) -> Any:
        """Health of the server for this deployment (404 if there is no such deployment)."""
        plane().handlers.services(deployment_name)
        return {"status": "healthy"}


@blp.route("/workflows")
class Workflows(MethodView):
    """The deployment's workflows."""

    @blp.response(200, WorkflowListSchema)
    def get(self, deployment_name: str) -> Any:
        """The names of the workflows: the deployment's service ids."""
        return {"workflows": plane().handlers.services(deployment_name)}


def _run_input(body: dict[str, Any]) -> dict[str, Any]:
    """The task input of a run request; a Context is refused (sessions keep it instead)."""
    if body.get("run_context"):
        raise InvalidInput(
            "context is not accepted: Celeriac keeps a workflow's Context in sessions "
            "(POST /deployments/{d}/sessions/create, then tasks with that session_id)",
            errors={"context": ["must be empty or absent"]},
        )
    return start_input(body.get("start_event"), body.get("kwargs"))


@blp.route("/workflows/<string:name>/run")
class WorkflowRun(MethodView):
    """Run a workflow and wait."""

    @blp.arguments(RunArgs(), location="query")
    @blp.arguments(RunBodySchema())
    @blp.response(200, HandlerSchema)
    @blp.alt_response(413, **too_large("The start event"))
    def post(
        self, args: dict[str, Any], body: dict[str, Any], deployment_name: str, name: str
    ) -> Any:
        """Run the workflow and return its handler once completed (502 if it fails, 504 after
        ``timeout`` seconds)."""
        return plane().handlers.run(
            deployment_name,
            name,
            _run_input(body),
            body["handler_id"],
            args["timeout"],
            client_gone(),
        )


@blp.route("/workflows/<string:name>/run-nowait")
class WorkflowRunNowait(MethodView):
    """Start a workflow."""

    @blp.arguments(RunBodySchema())
    @blp.response(200, HandlerSchema)
    @blp.alt_response(413, **too_large("The start event"))
    def post(self, body: dict[str, Any], deployment_name: str, name: str) -> Any:
        """Queue a run of the workflow and return its handler at once."""
        return plane().handlers.start(deployment_name, name, _run_input(body), body["handler_id"])


@blp.route("/workflows/<string:name>/schema")
class WorkflowSchema(MethodView):
    """The workflow's start and stop events."""

    @blp.response(200, WorkflowSchemaSchema)
    def get(self, deployment_name: str, name: str) -> Any:
        """JSON schemas of the start and stop events (a worker of the service describes its
        workflow once per deployment version; 503 if none answers)."""
        description = plane().descriptions.get(deployment_name, name)
        return {"start": description["start"], "stop": description["stop"]}


@blp.route("/workflows/<string:name>/events")
class WorkflowEvents(MethodView):
    """The workflow's events."""

    @blp.response(200, WorkflowEventsSchema)
    def get(self, deployment_name: str, name: str) -> Any:
        """JSON schemas of every event the workflow's steps take or return."""
        description = plane().descriptions.get(deployment_name, name)
        return {"events": [event["schema"] for event in description["events"]]}


@blp.route("/workflows/<string:name>/representation")
class WorkflowRepresentation(MethodView):
    """The workflow's graph."""

    @blp.response(200, WorkflowGraphSchema)
    def get(self, deployment_name: str, name: str) -> Any:
        """The workflow as a graph of steps and events (llama-index's WorkflowGraph)."""
        graph = plane().descriptions.get(deployment_name, name)["graph"]
        if "error" in graph:
            raise WorkflowNotDescribed(graph["error"], errors={"workflow": name})
        return {"graph": graph}


@blp.route("/handlers")
class Handlers(MethodView):
    """The deployment's handlers."""

    @blp.arguments(HandlerFilterArgs(), location="query")
    @blp.response(200, HandlerListSchema)
    def get(self, args: dict[str, Any], deployment_name: str) -> Any:
        """Handlers, newest first, filtered by ``status`` and ``workflow_name`` (repeatable)."""
        handlers = plane().handlers.all(
            deployment_name, statuses=args["status"], services=args["workflow_name"]
        )
        return {"handlers": handlers}


@blp.route("/handlers/<string:handler_id>")
class Handler(MethodView):
    """One handler."""

    @blp.response(200, HandlerSchema)
    def get(self, deployment_name: str, handler_id: str) -> Any:
        """A handler with its status, and its result or error once it ended."""
        return plane().tasks.get(deployment_name, handler_id)


@blp.route("/handlers/<string:handler_id>/cancel")
class HandlerCancel(MethodView):
    """Cancel a handler."""

    @blp.arguments(CancelArgs(), location="query")
    @blp.response(200, CancelledSchema)
    @blp.alt_response(
        409,
        schema=ErrorSchema,
        description="The handler has ended, and `purge` was not asked for; nothing changed.",
    )
    def post(self, args: dict[str, Any], deployment_name: str, handler_id: str) -> Any:
        """Cancel a running handler (its task ends ``cancelled``: see the tasks' ``cancel``);
        with ``purge=true`` also delete it, with its events, whether it ran or ended."""
        tasks = plane().tasks
        if not args["purge"]:
            tasks.cancel(deployment_name, handler_id)
            return {"status": "cancelled"}
        tasks.purge(deployment_name, handler_id)
        return {"status": "deleted"}


@blp.route("/events/<string:handler_id>")
class HandlerEvents(MethodView):
    """A handler's event stream (out) and the events sent into it (in)."""

    @blp.arguments(StreamArgs(), location="query")
    @blp.doc(responses=_STREAM)
    def get(self, args: dict[str, Any], deployment_name: str, handler_id: str) -> Response:
        """Follow the handler's events live, after ``after_sequence`` (or ``Last-Event-ID``),
        until it ends: server-sent events (``id`` = sequence number) or NDJSON."""
        cp = plane()
        task = cp.tasks.get(deployment_name, handler_id)  # 404 before streaming
        after = args["after_sequence"]
        if args["sse"]:
            header = last_event_id()
            after = after if header is None else header
        if after is None:
            after = cp.events.last_seq(handler_id)
        ended = task.task_status.terminal
        if ended and (task.event_count is None or after + 1 >= task.event_count):
            return Response(status=204)
        lines = envelope_lines(
            cp.events.follow(handler_id, after=after),
            sse=args["sse"],
            qualified_name=args["include_qualified_name"],
        )
        return stream_response(lines, SSE if args["sse"] else NDJSON)

    @blp.arguments(SendEventBodySchema())
    @blp.response(200, SentSchema)
    @blp.alt_response(413, **too_large("The event"))
    def post(self, body: dict[str, Any], deployment_name: str, handler_id: str) -> Any:
        """Send an event (a ``HumanResponseEvent`` answering an ``InputRequiredEvent``) into
        the running handler (409 once it ended)."""
        if body["step"]:
            raise InvalidInput(
                "sending an event to one step is not supported; leave step out",
                errors={"step": ["not supported: events reach every step waiting for them"]},
            )
        cp = plane()
        sent = event_obj_str(body["event"], cp.settings.max_nesting)
        cp.events.send(deployment_name, handler_id, sent, None, field="event")
        return {"status": "sent"}
