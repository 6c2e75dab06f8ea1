"""Marshmallow schemas of the HTTP API, in LlamaDeploy's shapes plus Celeriac's extra fields."""

from __future__ import annotations

import json
from typing import Any

from flask_smorest.fields import Upload
from marshmallow import EXCLUDE, Schema, fields, validate

from app.api.auth import may_see_internals
from app.api.internals import shown
from app.control.lifecycle import MultitaskStrategy
from app.models import AttemptOutcome, Task, TaskStatus
from config.deployment.controls import MAX_SECONDS


class PublicError(fields.Dict):
    """A task's or a run's error, without what only the server's operator may see
    (traceback, server paths: ``app.api.internals``)."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return shown(super()._serialize(value, attr, obj, **kwargs))


class ServerPath(fields.String):
    """A path on the server: null for a caller who may not see internals."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return super()._serialize(value, attr, obj, **kwargs) if may_see_internals() else None


#: The largest offset, page or event number a request may give: the database's 32-bit
#: integer (a larger one would overflow it, a 500, where it is the client's mistake, a 422).
LARGEST_INT = 2**31 - 1


def run_timeout(description: str) -> fields.Float:
    """A run's ``timeout`` query argument: seconds, above 0 and at most a day."""
    return fields.Float(
        load_default=None,
        validate=validate.Range(min=0, min_inclusive=False, max=86400),
        # (apispec documents the range's minimum as inclusive)
        metadata={"description": description, "exclusiveMinimum": 0},
    )


def _seconds(description: str) -> fields.Float:
    """A task's own time control: seconds, above 0 and at most 30 days, or null."""
    return fields.Float(
        allow_none=True,
        load_default=None,
        allow_nan=False,
        validate=validate.Range(min=0, min_inclusive=False, max=MAX_SECONDS),
        metadata={"description": description, "exclusiveMinimum": 0},
    )


class RootSchema(Schema):
    """The API's entry points (LlamaDeploy's ``GET /``)."""

    swagger_docs = fields.Url(metadata={"description": "The interactive API documentation."})
    status = fields.Url(metadata={"description": "The server's status."})


class StatusSchema(Schema):
    """Health of the API server (LlamaDeploy's ``Status``)."""

    status = fields.String(metadata={"description": "Healthy, Unhealthy or Down"})
    status_message = fields.String()
    max_deployments = fields.Integer(allow_none=True)
    deployments = fields.List(fields.String(), allow_none=True)


class AliveSchema(Schema):
    """The process answers (``/healthz``); nothing else was checked."""

    status = fields.String(metadata={"description": "Always `ok`."})


class ReadinessCheckSchema(Schema):
    """What one readiness check found."""

    ok = fields.Boolean(metadata={"description": "Whether the check succeeded in time."})
    seconds = fields.Float(
        metadata={"description": "How long it took, or had run when the probe stopped waiting."}
    )
    reason = fields.String(metadata={"description": "Why it failed (only when it did)."})


class ReadinessSchema(Schema):
    """The database and the broker answer (``/readyz``)."""

    status = fields.String(metadata={"description": "Always `ready` (else the answer is 503)."})
    checks = fields.Dict(
        keys=fields.String(),
        values=fields.Nested(ReadinessCheckSchema),
        metadata={"description": "Each check (`database`, `broker`) by name."},
    )


class ServiceSchema(Schema):
    """One service of a deployment."""

    name = fields.String(metadata={"description": "The service id (its key in the YAML)."})
    display_name = fields.String()
    queue = fields.String(metadata={"description": "The Celery queue its workers consume."})


class WorkerSchema(Schema):
    """A live worker of a service."""

    name = fields.String()
    host = fields.String()
    pid = fields.Integer()
    started_at = fields.DateTime()
    last_heartbeat = fields.DateTime(attribute="last_seen")


class LiveServiceSchema(ServiceSchema):
    """A service with the workers consuming its queue now."""

    workers = fields.List(fields.Nested(WorkerSchema))


class ServiceSummarySchema(LiveServiceSchema):
    """A service with its live workers and the counts of its tasks."""

    now = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        metadata={
            "description": "Tasks that have not ended, by status: `queued`, `running`, "
            "`waiting_input`, `retrying`."
        },
    )
    last_hour = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        metadata={
            "description": "Tasks that ended within the last hour, by status: `succeeded`, "
            "`failed`, `cancelled`, `timed_out`."
        },
    )
    per_minute = fields.Float(
        metadata={"description": "Tasks that ended per minute, over the last five minutes."}
    )


class DeploymentSchema(Schema):
    """A deployment (LlamaDeploy's ``DeploymentDefinition`` is just ``name``)."""

    name = fields.String()
    default_service = fields.String(allow_none=True)
    warnings = fields.List(
        fields.String(),
        metadata={"description": "What the file holds that is accepted but does nothing."},
    )
    version = fields.Integer()
    base_path = ServerPath(
        allow_none=True,
        metadata={
            "description": "The folder local sources are relative to; null unless the caller "
            "may see the server's paths."
        },
    )
    services = fields.List(fields.Nested(ServiceSchema))
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class DeploymentSpecSchema(Schema):
    """A deployment's full parsed file, as service workers load it."""

    name = fields.String()
    version = fields.Integer()
    base_path = fields.String(
        allow_none=True,
        metadata={
            "description": "The folder local sources are relative to; null but for a worker "
            "or an admin token (or on an open server)."
        },
    )
    spec = fields.Dict(
        metadata={
            "description": "The deployment file, parsed and completed; each service's `env` "
            "values, and the user and password in its source's URL, are shown to worker "
            "tokens only (and on an open server)."
        }
    )
    env_redacted = fields.Boolean(
        metadata={"description": "True when the `env` values were replaced by `<redacted>`."}
    )
    kept_versions = fields.List(
        fields.Integer(),
        metadata={
            "description": "The earlier versions kept while durable tasks that started on them "
            "have not ended (`/versions/{v}/spec` reads each); only on the current spec."
        },
    )


class DeploymentFileSchema(Schema):
    """The multipart body of ``deployments/create``."""

    config_file = Upload(required=True, metadata={"description": "The deployment YAML file."})


class CreateDeploymentArgs(Schema):
    """Query arguments of ``deployments/create``."""

    class Meta:
        unknown = EXCLUDE

    base_path = fields.String(
        load_default=".",
        metadata={"description": "Folder (on the server) that local sources are relative to."},
    )
    reload = fields.Boolean(
        load_default=False, metadata={"description": "Replace an existing one."}
    )
    local = fields.Boolean(
        load_default=False, metadata={"description": "Accepted for LlamaDeploy clients; no effect."}
    )


class TaskDefinitionSchema(Schema):
    """The body of ``tasks/run`` and ``tasks/create`` (LlamaDeploy's ``TaskDefinition``)."""

    class Meta:
        unknown = EXCLUDE

    input = fields.Raw(
        load_default="{}",
        metadata={"description": "Run keyword arguments: a JSON-encoded string or an object."},
    )
    task_id = fields.String(
        allow_none=True,
        load_default=None,
        validate=validate.Length(min=1, max=64),
        metadata={"description": "Optional client-chosen id; must be unused."},
    )
    session_id = fields.String(allow_none=True, load_default=None)
    service_id = fields.String(allow_none=True, load_default=None)
    time_limit = _seconds(
        "Celeriac: seconds the task's run may take, in place of its service's `time-limit`; "
        "past them the run is stopped and the task ends `timed_out`."
    )
    queue_timeout = _seconds(
        "Celeriac: seconds the task may wait in the queue before it starts, in place of its "
        "service's `queue-timeout`; past them it ends `timed_out` without starting."
    )


class RunArgs(Schema):
    """Query arguments of ``tasks/run`` and ``tasks/create``."""

    class Meta:
        unknown = EXCLUDE

    session_id = fields.String(load_default=None)
    timeout = run_timeout("Seconds ``tasks/run`` waits before answering 504.")
    multitask_strategy = fields.Enum(
        MultitaskStrategy,
        by_value=True,
        load_default=MultitaskStrategy.ENQUEUE,
        metadata={
            "description": "If the session is busy with another task: `enqueue` this one "
            "(it starts when the session is free) or `reject` it with 409."
        },
    )


#: A printable ASCII character (space included), and one that is not a space either.
_PRINTABLE = r"[ -~]"
_VISIBLE = r"[!-~]"
IDEMPOTENCY_KEY = "Idempotency-Key"
#: The header an answer replayed under an idempotency key carries.
REPLAYED = "Idempotent-Replayed"


class CreateArgs(RunArgs):
    """Query arguments of ``tasks/create``."""

    standalone = fields.Boolean(
        load_default=False,
        metadata={
            "description": "Celeriac: with no `session_id`, run the task on its own, in no "
            "session (as `tasks/run` does), instead of opening a new session for it."
        },
    )


class IdempotencyArgs(Schema):
    """The ``Idempotency-Key`` header of ``tasks/run`` and ``tasks/create``."""

    class Meta:
        unknown = EXCLUDE

    idempotency_key = fields.String(
        data_key=IDEMPOTENCY_KEY,
        validate=[
            validate.Length(min=1, max=255, error="must be {min} to {max} characters long"),
            # HTTP drops spaces at either end of a header value: none may be in a key.
            validate.Regexp(
                rf"^{_VISIBLE}({_PRINTABLE}*{_VISIBLE})?$",
                error="must be printable ASCII characters, with no space at either end",
            ),
        ],
        metadata={
            "description": "Send the task at most once: the same request again under this "
            "key, on this deployment, gets the same task (with `Idempotent-Replayed: true`) "
            "for `CELERIAC_IDEMPOTENCY_TTL` seconds (a day); another request under it gets "
            "409. 1 to 255 printable ASCII characters."
        },
    )


class EventsArgs(Schema):
    """Query arguments of the event stream."""

    class Meta:
        unknown = EXCLUDE

    session_id = fields.String(load_default=None)
    raw_event = fields.Boolean(
        load_default=False,
        metadata={"description": "NDJSON lines carry the type and qualified name (LlamaDeploy)."},
    )
    last_event_id = fields.Integer(
        load_default=None,
        validate=validate.Range(min=-1, max=LARGEST_INT),
        metadata={"description": "Resume after this event (as the Last-Event-ID header)."},
    )


class EventDefinitionSchema(Schema):
    """LlamaDeploy's ``EventDefinition``: an event to send into a running task."""

    class Meta:
        unknown = EXCLUDE

    service_id = fields.String(load_default=None, allow_none=True)
    event_obj_str = fields.String(
        required=True,
        metadata={"description": "The event as llama-index's JsonSerializer writes it."},
    )


class SessionArgs(Schema):
    """An optional ``session_id`` query argument."""

    class Meta:
        unknown = EXCLUDE

    session_id = fields.String(load_default=None)


class RequiredSessionArgs(Schema):
    """A required ``session_id`` query argument."""

    class Meta:
        unknown = EXCLUDE

    session_id = fields.String(required=True)


class PageArgs(Schema):
    """Pagination and filters of task lists."""

    class Meta:
        unknown = EXCLUDE

    session_id = fields.String(load_default=None)
    status = fields.Enum(
        TaskStatus,
        by_value=True,
        load_default=None,
        metadata={"description": "Only the tasks of this status."},
    )
    service_id = fields.String(
        load_default=None, metadata={"description": "Only the tasks of this service."}
    )
    order = fields.String(
        load_default="oldest",
        validate=validate.OneOf(["oldest", "newest"]),
        metadata={"description": "`oldest` first (the default), or `newest` first."},
    )
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=LARGEST_INT))


class TaskSchema(Schema):
    """A task: LlamaDeploy's ``TaskDefinition`` fields, then status, outcome and timestamps."""

    task_id = fields.String(attribute="id")
    session_id = fields.String(
        allow_none=True, metadata={"description": "Null for a task created outside a session."}
    )
    service_id = fields.String(attribute="service")
    input = fields.Method("dump_input", metadata={"description": "JSON-encoded run kwargs."})
    status = fields.String(validate=validate.OneOf([s.value for s in TaskStatus]))
    result = fields.Raw(allow_none=True)
    error = PublicError(
        allow_none=True,
        metadata={
            "description": "Why the task failed, timed out or was cancelled (or, while it is "
            "`retrying`, why its last run failed): `type` and `message`."
        },
    )
    attempts = fields.Integer(metadata={"description": "Runs of the task recorded so far."})
    run = fields.Integer(
        metadata={"description": "The task's run: 1, then one more per retry (by hand or policy)."}
    )
    controls = fields.Dict(
        allow_none=True,
        metadata={
            "description": "The task's controls: `time-limit`, `queue-timeout` and `retry`, "
            "from its service's `celeriac` block and the task's own settings."
        },
    )
    retry_at = fields.DateTime(
        allow_none=True, metadata={"description": "When a `retrying` task runs again."}
    )
    expires_at = fields.DateTime(
        allow_none=True,
        metadata={"description": "When a task still queued then ends `timed_out` instead."},
    )
    parked_at = fields.DateTime(
        allow_none=True,
        metadata={
            "description": "Celeriac, durable services: when the task's run, waiting for "
            "input, was let go; it holds no worker until the answer resumes it."
        },
    )
    pinned_version = fields.Integer(
        allow_none=True,
        metadata={
            "description": "Celeriac, durable services: the deployment version the task's run "
            "started on, which it resumes on after a reload; null for other services."
        },
    )
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)

    def dump_input(self, task: Task) -> str:
        """LlamaDeploy clients expect the input as a JSON string."""
        return json.dumps(task.input)


class AttemptSchema(Schema):
    """One run of a task: its worker, when it began and ended, and how."""

    attempt = fields.Integer(metadata={"description": "1 for the first run recorded, and so on."})
    worker = fields.String(metadata={"description": "The Celery worker (node name) that ran it."})
    started_at = fields.DateTime()
    finished_at = fields.DateTime(
        allow_none=True, metadata={"description": "Empty while the run goes on."}
    )
    outcome = fields.String(
        allow_none=True,
        validate=validate.OneOf([o.value for o in AttemptOutcome]),
        metadata={
            "description": "succeeded, failed, cancelled, timed_out, lost (it never "
            "reported its end: a later run began, or the task was queued again), or parked "
            "(a durable run let go while it waited for input; the answer began the next); "
            "empty while the run goes on."
        },
    )
    error = PublicError(allow_none=True, metadata={"description": "The run's error, if any."})


class StepSchema(Schema):
    """One execution of a durable task's step that ended."""

    step = fields.String(metadata={"description": "The step's name (its method)."})
    input = fields.String(metadata={"description": "The event it took (its class name)."})
    attempt = fields.Integer(
        metadata={
            "description": "How many times the step ran on that event, this one included "
            "(a step that waited for input runs again from its top once answered)."
        }
    )
    run = fields.Integer(metadata={"description": "The task's run it belongs to."})
    started_at = fields.DateTime(
        allow_none=True, metadata={"description": "Empty if its worker did not see it start."}
    )
    ended_at = fields.DateTime()
    duration = fields.Float(allow_none=True, metadata={"description": "Seconds it took."})
    outcome = fields.String(
        metadata={
            "description": "`returned <Event>`, `failed: <Error>`, `waits for input "
            "(<Event>)` or `collected its event`."
        }
    )


class MomentSchema(Schema):
    """One step of a task's life, as its timeline tells it."""

    at = fields.DateTime()
    status = fields.String(
        metadata={
            "description": "The status the task took then, or the outcome of a run "
            "(`lost` too: see the attempts)."
        }
    )
    note = fields.String(metadata={"description": "What happened, in words."})
    error = PublicError(
        allow_none=True, metadata={"description": "The run's or the task's error, if any."}
    )


class TaskDetailSchema(TaskSchema):
    """A task with each of its runs."""

    attempt_history = fields.List(
        fields.Nested(AttemptSchema), metadata={"description": "Each run, first first."}
    )


class TaskResultSchema(Schema):
    """LlamaDeploy's ``TaskResult``: the result as a string, plus the task's status and error."""

    task_id = fields.String(attribute="id")
    history = fields.Method("dump_history")
    result = fields.Method("dump_result")
    data = fields.Method("dump_data")
    status = fields.String()
    error = PublicError(allow_none=True)

    def dump_history(self, _task: Task) -> list[Any]:
        """Always empty, as in LlamaDeploy."""
        return []

    def dump_data(self, _task: Task) -> dict[str, Any]:
        """Always empty, as in LlamaDeploy."""
        return {}

    def dump_result(self, task: Task) -> str:
        """The result as text; a failed task gives its error so waiting clients stop."""
        if task.status != TaskStatus.SUCCEEDED:
            return f"Error: {shown((task.error or {}).get('message', task.status))}"
        return result_text(task.result)


def result_text(value: Any) -> str:
    """A result as LlamaDeploy's string field: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


class SessionSchema(Schema):
    """LlamaDeploy's ``SessionDefinition`` plus when it was created."""

    session_id = fields.String(attribute="id")
    task_ids = fields.List(fields.String())
    state = fields.Dict()
    created_at = fields.DateTime()
