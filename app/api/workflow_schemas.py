"""Marshmallow schemas of LlamaIndex's workflow-server API, in ``llama-agents-client``'s shapes."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate

from app.api.internals import shown
from app.api.schemas import LARGEST_INT, run_timeout
from app.control.handlers import HANDLER_STATUSES, handler_status
from app.models import Task, TaskStatus

#: The class a workflow's plain result travels in.
STOP_EVENT = "workflows.events.StopEvent"


class EnvelopeSchema(Schema):
    """An event as the workflow server sends it: its fields, type and qualified name."""

    value = fields.Dict(required=True, metadata={"description": "The event's fields."})
    qualified_name = fields.String(
        allow_none=True, metadata={"description": "Module path and class name (deprecated)."}
    )
    type = fields.String(required=True, metadata={"description": "The event's class name."})
    types = fields.List(
        fields.String(),
        allow_none=True,
        metadata={"description": "Base event classes; Celeriac does not record them (null)."},
    )


class HandlerSchema(Schema):
    """A handler (a Celeriac task) in the workflow server's ``HandlerData`` shape."""

    handler_id = fields.String(attribute="id", metadata={"description": "The task id."})
    workflow_name = fields.String(attribute="service", metadata={"description": "The service."})
    run_id = fields.Method(
        "dump_run_id", metadata={"type": "string", "description": "The task id again."}
    )
    status = fields.Method(
        "dump_status",
        metadata={
            "type": "string",
            "enum": list(HANDLER_STATUSES),
            "description": "queued, running and waiting_input show as running; succeeded as "
            "completed.",
        },
    )
    celeriac_status = fields.Method(
        "dump_celeriac_status",
        metadata={"type": "string", "description": "The task's own status (Celeriac's)."},
    )
    error = fields.Method("dump_error", metadata={"type": ["string", "null"]})
    result = fields.Method(
        "dump_result",
        metadata={"description": "The StopEvent holding the result, once completed."},
    )
    started_at = fields.Method("dump_started_at", metadata={"type": "string"})
    updated_at = fields.Method("dump_updated_at", metadata={"type": ["string", "null"]})
    completed_at = fields.Method("dump_completed_at", metadata={"type": ["string", "null"]})

    def dump_status(self, task: Task) -> str:
        """The handler status."""
        return handler_status(task.status)

    def dump_run_id(self, task: Task) -> str:
        """One run per handler: the task id."""
        return task.id

    def dump_celeriac_status(self, task: Task) -> str:
        """The task status behind the handler status."""
        return str(TaskStatus(task.status).value)

    def dump_error(self, task: Task) -> str | None:
        """The error's message, if the task failed."""
        if task.error is None:
            return None
        return str(shown(task.error.get("message") or task.error.get("type") or "failed"))

    def dump_result(self, task: Task) -> dict[str, Any] | None:
        """The result in a StopEvent's envelope, as ``HandlerData.result`` holds it."""
        if task.status != TaskStatus.SUCCEEDED:
            return None
        return {
            "value": {"result": task.result},
            "qualified_name": STOP_EVENT,
            "type": "StopEvent",
            "types": None,
        }

    def dump_started_at(self, task: Task) -> str:
        """When the run started (when it was queued, until a worker took it)."""
        return _iso(task.started_at or task.created_at) or ""

    def dump_updated_at(self, task: Task) -> str | None:
        """The latest change the task's timestamps show."""
        moments = [t for t in (task.created_at, task.started_at, task.finished_at) if t]
        return _iso(max(moments)) if moments else None

    def dump_completed_at(self, task: Task) -> str | None:
        """When the task ended."""
        return _iso(task.finished_at)


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


class HandlerListSchema(Schema):
    """``GET /handlers``."""

    handlers = fields.List(fields.Nested(HandlerSchema))


class HandlerFilterArgs(Schema):
    """Filters of ``GET /handlers``; each may be repeated. Empty values are no filter:
    ``llama-agents-client`` sends ``status=&workflow_name=`` when it filters nothing."""

    class Meta:
        unknown = EXCLUDE

    status = fields.List(
        # (blank: no filter)
        fields.String(validate=validate.OneOf([*HANDLER_STATUSES, ""])),
        load_default=None,
        metadata={
            "description": f"Keep handlers in these statuses: {', '.join(HANDLER_STATUSES)}."
        },
    )
    workflow_name = fields.List(
        fields.String(), load_default=None, metadata={"description": "Keep these workflows."}
    )

    @post_load
    def drop_blanks(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        """Blank values filter nothing."""
        for name in ("status", "workflow_name"):
            values = [v.strip() for v in data.get(name) or [] if v.strip()]
            data[name] = values or None
        return data


class HealthSchema(Schema):
    """``GET /health``."""

    status = fields.String(validate=validate.OneOf(["healthy", "unhealthy"]))


class WorkflowListSchema(Schema):
    """``GET /workflows``: the deployment's service ids."""

    workflows = fields.List(fields.String())


class RunBodySchema(Schema):
    """The body of ``run`` and ``run-nowait``."""

    class Meta:
        unknown = EXCLUDE

    start_event = fields.Raw(
        load_default=None,
        metadata={
            "description": "The start event: its fields (bare) or an envelope with `value`. "
            "Its fields become the run's keyword arguments.",
            # (apispec adds "null": the field may be null)
            "type": "object",
        },
    )
    kwargs = fields.Dict(
        load_default=None, allow_none=True, metadata={"description": "More run keyword arguments."}
    )
    # Not ``context``: marshmallow 3's Schema has an attribute of that name.
    run_context = fields.Dict(
        data_key="context",
        load_default=None,
        allow_none=True,
        metadata={
            "description": "Must be empty: Celeriac keeps a Context in sessions.",
            "maxProperties": 0,
        },
    )
    handler_id = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.Length(min=1, max=64),
        metadata={"description": "The id of the new handler (an unused task id)."},
    )


class RunArgs(Schema):
    """Query arguments of ``run``."""

    class Meta:
        unknown = EXCLUDE

    timeout = run_timeout("Seconds to wait before answering 504 (the run goes on).")


#: A decimal integer, as a query gives one (``10.0`` is one too, as in JSON Schema).
_INTEGER = re.compile(r"(-?[0-9]+)(?:\.0*)?")


class AfterSequence(fields.Field):
    """An event sequence number, or ``now``."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int | None:
        text = str(value)
        if text == "now":
            return None
        integer = _INTEGER.fullmatch(text)
        if integer is None:
            raise ValidationError("an event's sequence number (-1 for the first) or 'now'")
        number = int(integer.group(1))
        if not -1 <= number <= LARGEST_INT:
            raise ValidationError(f"must be from -1 to {LARGEST_INT}, or 'now'")
        return number


class StreamArgs(Schema):
    """Query arguments of ``GET /events/{handler_id}``."""

    class Meta:
        unknown = EXCLUDE

    sse = fields.Boolean(
        load_default=True, metadata={"description": "Server-sent events, else NDJSON."}
    )
    after_sequence = AfterSequence(
        load_default=None,
        metadata={
            "description": "Stream after this sequence number: -1 from the first event, `now` "
            "(default) only new ones. With SSE the Last-Event-ID header wins.",
            "anyOf": [
                {"type": "integer", "minimum": -1, "maximum": LARGEST_INT},
                {"const": "now"},
            ],
        },
    )
    include_qualified_name = fields.Boolean(
        load_default=True, metadata={"description": "Envelopes carry the qualified name."}
    )
    include_internal = fields.Boolean(
        load_default=False,
        metadata={"description": "Accepted; Celeriac stores no internal events."},
    )


class SendEventBodySchema(Schema):
    """The body of ``POST /events/{handler_id}``."""

    class Meta:
        unknown = EXCLUDE

    event = fields.Raw(
        required=True,
        metadata={
            "description": "The event: an envelope `{type, value}` (or `qualified_name`), as "
            "an object or a JSON string.",
            "type": ["object", "string"],
        },
    )
    step = fields.String(
        load_default=None,
        allow_none=True,
        metadata={"description": "Not supported: events go to every waiting step."},
    )


class SentSchema(Schema):
    """``POST /events/{handler_id}``'s answer."""

    status = fields.String(validate=validate.OneOf(["sent"]))


class CancelArgs(Schema):
    """Query arguments of ``cancel``."""

    class Meta:
        unknown = EXCLUDE

    purge = fields.Boolean(load_default=False)


class CancelledSchema(Schema):
    """What ``cancel`` answers: ``cancelled``, or ``deleted`` with ``purge``."""

    status = fields.String(validate=validate.OneOf(["deleted", "cancelled"]))


class WorkflowSchemaSchema(Schema):
    """``GET /workflows/{name}/schema``: JSON schemas of the start and stop events."""

    start = fields.Dict()
    stop = fields.Dict()


class WorkflowEventsSchema(Schema):
    """``GET /workflows/{name}/events``: JSON schemas of the workflow's events."""

    events = fields.List(fields.Dict())


class WorkflowGraphSchema(Schema):
    """``GET /workflows/{name}/representation``: the workflow as a graph."""

    graph = fields.Dict(metadata={"description": "Nodes and edges (llama-index's WorkflowGraph)."})
