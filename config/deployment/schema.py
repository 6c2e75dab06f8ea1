"""The marshmallow schemas of a deployment file; loading one builds the spec's dataclasses."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from marshmallow import (
    Schema,
    ValidationError,
    fields,
    post_load,
    pre_load,
    validate,
    validates_schema,
)

from config.deployment.controls import (
    MAX_ATTEMPTS,
    MAX_SECONDS,
    ConcurrencyLimit,
    RetryPolicy,
    ServiceControls,
)
from config.deployment.rules import (
    PORT_RANGE,
    check_alias,
    check_error_name,
    check_git_location,
    check_import_path,
    check_local_location,
    check_safe_name,
    check_source_type,
    check_ui_path,
    kind,
)
from config.deployment.spec import (
    SYNC_POLICIES,
    UI_SERVICE_ID,
    ControlPlaneSpec,
    DeploymentSpec,
    MessageQueueSpec,
    ServiceSpec,
    SourceSpec,
    SourceType,
)


def _port(**kwargs: Any) -> fields.Integer:
    """A TCP port number; YAML reads ports as integers, so no string coercion."""
    return fields.Integer(strict=True, validate=PORT_RANGE, **kwargs)


# Custom fields subclass ``fields.Field`` without type parameters: it is generic only from
# marshmallow 4 on, and subscripting it fails at import under marshmallow 3, which
# llama-index-core's dependencies hold most LlamaIndex users to.


def _maybe(field_type: type[fields.Field], **kwargs: Any) -> fields.Field:
    """An optional option whose default is None, as in LlamaDeploy's queue configs."""
    return field_type(load_default=None, **kwargs)


class _StringMap(fields.Field):
    """A mapping of names to scalars, the scalars turned into strings (YAML reads 1 as a number)."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> dict[str, str]:
        if not isinstance(value, Mapping):
            raise ValidationError("Not a valid mapping.")
        result: dict[str, str] = {}
        errors: dict[str, list[str]] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                errors[str(key)] = ["Keys must be strings; quote the key in the YAML."]
            elif isinstance(item, bool):
                result[key] = "true" if item else "false"
            elif isinstance(item, str | int | float):
                result[key] = str(item)
            else:
                errors[key] = [f"Must be a string, number or boolean, not {kind(item)}."]
        if errors:
            raise ValidationError(errors)
        return result


class _SourceSchema(Schema):
    """A service's ``source`` mapping."""

    type = fields.String(required=True, validate=check_source_type)
    name = fields.String()
    location = fields.String()
    sync_policy = fields.String(allow_none=True, validate=validate.OneOf(SYNC_POLICIES))

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _check_location(
        self, data: dict[str, Any], original: Mapping[str, Any], **kwargs: Any
    ) -> None:
        check_alias(data, "name", "location")
        location = data.get("location", data.get("name"))
        if location is None:
            # An unusable name or location was reported already by its own field.
            if "name" not in original and "location" not in original:
                raise ValidationError("Missing data for required field.", "name")
            return
        field_name = "location" if "location" in data else "name"
        checks = {"local": check_local_location, "git": check_git_location}
        check = checks.get(data.get("type", ""))
        if check is not None:
            try:
                check(location)
            except ValidationError as exc:
                raise ValidationError(exc.messages, field_name) from exc

    @post_load
    def _build(self, data: dict[str, Any], **kwargs: Any) -> SourceSpec:
        location: str = data["location"] if "location" in data else data["name"]
        return SourceSpec(SourceType(data["type"]), location, data.get("sync_policy"))


_LARGEST_EXACT = 2**53


class _Number(fields.Field):
    """A number as YAML reads it: a boolean or a quoted number is refused, not converted."""

    def __init__(self, *, whole: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.whole = whole

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> int | float:
        expected = "a whole number" if self.whole else "a number"
        # bool is an int to Python; to a YAML author "true" is no number.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError(f"Must be {expected}, not {kind(value)}.")
        if isinstance(value, int):
            if self.whole or abs(value) <= _LARGEST_EXACT:
                return value if self.whole else float(value)
            # Past 2**53 a float is no longer the number written; far past, float() overflows.
            raise ValidationError(f"Must be at most {_LARGEST_EXACT}, not {value}.")
        if self.whole:
            raise ValidationError(f"Must be {expected}, not {value!r}.")
        if not math.isfinite(value):
            raise ValidationError(f"Must be a finite number, not {value!r}.")
        return value


_SECONDS = validate.Range(
    min=0,
    min_inclusive=False,
    max=MAX_SECONDS,
    error="Must be more than 0 and at most {max} seconds (30 days), not {input}.",
)
_DELAY = validate.Range(
    min=0, max=MAX_SECONDS, error="Must be from {min} to {max} seconds (30 days), not {input}."
)


def _error_names(**kwargs: Any) -> fields.List:
    """A list of exception class names, matched by name only (never imported)."""
    return fields.List(fields.String(validate=check_error_name), **kwargs)


class _RetrySchema(Schema):
    """The ``retry`` mapping of a service's ``celeriac`` block."""

    attempts = _Number(
        whole=True,
        required=True,
        validate=validate.Range(
            min=1,
            max=MAX_ATTEMPTS,
            error="Must be from {min} to {max} (runs in all, the first included), not {input}.",
        ),
    )
    backoff = _Number(validate=_DELAY)
    multiplier = _Number(
        validate=validate.Range(min=1, error="Must be at least {min}, not {input}.")
    )
    max_backoff = _Number(data_key="max-backoff", validate=_DELAY)
    jitter = _Number(
        validate=validate.Range(min=0, max=1, error="Must be from 0 to 1, not {input}.")
    )
    on = _error_names()
    not_on = _error_names(data_key="not-on")

    @pre_load
    def _on_as_written(self, data: Any, **kwargs: Any) -> Any:
        # YAML 1.1, which PyYAML reads, takes a bare ``on`` key for the boolean true.
        if not isinstance(data, Mapping) or not any(key is True for key in data):
            return data
        if "on" in data:
            raise ValidationError("Given twice, as 'on' and as a bare on (true).", "on")
        return {("on" if key is True else key): value for key, value in data.items()}

    @validates_schema(skip_on_field_errors=True)
    def _check_backoff_below_cap(self, data: dict[str, Any], **kwargs: Any) -> None:
        backoff = data.get("backoff", RetryPolicy.backoff)
        max_backoff = data.get("max_backoff", RetryPolicy.max_backoff)
        if backoff <= max_backoff:
            return
        if "max_backoff" in data:
            raise ValidationError(
                f"Must be at least backoff ({backoff:g}), not {max_backoff:g}.", "max-backoff"
            )
        raise ValidationError(
            f"Must be at most max-backoff ({max_backoff:g}, its default), not {backoff:g}; "
            "give a larger max-backoff.",
            "backoff",
        )

    @post_load
    def _build(self, data: dict[str, Any], **kwargs: Any) -> RetryPolicy:
        for key in ("on", "not_on"):
            if key in data:
                data[key] = tuple(data[key])
        return RetryPolicy(**data)


class _ConcurrencySchema(Schema):
    """The ``concurrency`` mapping of a service's ``celeriac`` block."""

    limit = _Number(
        whole=True, required=True, validate=validate.Range(min=1, error="Must be at least 1.")
    )
    key = fields.String(validate=validate.Length(min=1, error="Must not be empty."))
    per_key = _Number(
        whole=True, data_key="per-key", validate=validate.Range(min=1, error="Must be at least 1.")
    )

    @validates_schema(skip_on_field_errors=True)
    def _check_per_key(self, data: dict[str, Any], **kwargs: Any) -> None:
        key, per_key = data.get("key"), data.get("per_key")
        if per_key is not None and key is None:
            raise ValidationError(
                "Needs key: the field of the task input whose values per-key counts by.",
                "per-key",
            )
        if key is not None and per_key is None:
            raise ValidationError(
                "Needs per-key: how many tasks may run at once per value of key.", "key"
            )
        if per_key is not None and per_key > data["limit"]:
            raise ValidationError(
                f"Must be at most limit ({data['limit']}), which caps every key together.",
                "per-key",
            )

    @post_load
    def _build(self, data: dict[str, Any], **kwargs: Any) -> ConcurrencyLimit:
        return ConcurrencyLimit(**data)


class _Flag(fields.Boolean):
    """A YAML boolean (``true``/``false``), never a number or a string that reads as one."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class _ControlsSchema(Schema):
    """A service's ``celeriac`` block: Celeriac's task controls (not in LlamaDeploy)."""

    time_limit = _Number(data_key="time-limit", validate=_SECONDS)
    queue_timeout = _Number(data_key="queue-timeout", validate=_SECONDS)
    retry = fields.Nested(_RetrySchema)
    concurrency = fields.Nested(_ConcurrencySchema)
    durable = _Flag()

    @post_load
    def _build(self, data: dict[str, Any], **kwargs: Any) -> ServiceControls:
        return ServiceControls(**data)


class _ServiceSchema(Schema):
    """One ``services`` entry (without its id, which is the entry's key)."""

    name = fields.String(required=True)
    source = fields.Nested(_SourceSchema, allow_none=True)
    path = fields.String(allow_none=True, validate=check_import_path)
    import_path = fields.String(data_key="import-path", allow_none=True, validate=check_import_path)
    host = fields.String(allow_none=True)
    port = _port(allow_none=True)
    env = _StringMap(allow_none=True)
    env_files = fields.List(fields.String(), data_key="env-files", allow_none=True)
    python_dependencies = fields.List(
        fields.String(), data_key="python-dependencies", allow_none=True
    )
    ts_dependencies = _StringMap(data_key="ts-dependencies", allow_none=True)
    controls = fields.Nested(_ControlsSchema, data_key="celeriac", allow_none=True)

    #: Whether the entry is a workflow, which needs a source and a path to import.
    is_workflow = True

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _check_import_path_given(
        self, data: dict[str, Any], original: Mapping[str, Any], **kwargs: Any
    ) -> None:
        check_alias(data, "path", "import_path", "import-path")
        given = original.get("path") is not None or original.get("import-path") is not None
        # LlamaDeploy only found out at deploy time that it had nothing to import; say it now.
        # (A service without a source is refused when deployed, not here: deployments stored
        # by earlier releases may hold one, and must still load.)
        if self.is_workflow and original.get("source") is not None and not given:
            raise ValidationError("Missing data for required field.", "path")

    @post_load
    def _build(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Return ServiceSpec keyword arguments; the caller knows the service id."""
        path = data.pop("path", None)
        data["import_path"] = data.get("import_path") or path
        for key in ("env_files", "python_dependencies"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        # An explicit null means the same as leaving the field out.
        return {key: value for key, value in data.items() if value is not None}


class _UiSchema(_ServiceSchema):
    """The ``ui`` mapping: a service whose path is a folder."""

    # The UI is a Next.js app: its path is a folder, never a Python import path.
    path = fields.String(allow_none=True, validate=check_ui_path)
    import_path = fields.String(data_key="import-path", allow_none=True, validate=check_ui_path)

    is_workflow = False

    @validates_schema(pass_original=True)
    def _check_no_controls(
        self, data: dict[str, Any], original: Mapping[str, Any], **kwargs: Any
    ) -> None:
        if "celeriac" in original:
            raise ValidationError(
                "The ui runs no tasks, so it takes no task controls; give them to a service.",
                "celeriac",
            )


class _ServiceMap(fields.Field):
    """The ``services`` mapping: service id to service, errors reported per id."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> dict[str, ServiceSpec]:
        if not isinstance(value, Mapping):
            raise ValidationError("Not a valid mapping.")
        if not value:
            raise ValidationError("Define at least one service.")
        services: dict[str, ServiceSpec] = {}
        errors: dict[str, Any] = {}
        for service_id, body in value.items():
            try:
                services[service_id] = _load_service(service_id, body)
            except ValidationError as exc:
                errors[str(service_id)] = exc.messages
        if errors:
            raise ValidationError(errors)
        return services


def _load_service(service_id: object, body: object) -> ServiceSpec:
    """Validate one ``services`` entry, reporting a bad id and a bad body together."""
    errors: dict[str, Any] = {}
    if not isinstance(service_id, str):
        errors["_schema"] = ["Service ids must be strings; quote the id in the YAML."]
    else:
        try:
            check_safe_name(service_id)
        except ValidationError as exc:
            errors["_schema"] = exc.messages
    if not isinstance(body, Mapping):
        errors.setdefault("_schema", []).append(f"Must be a mapping, not {kind(body)}.")
        raise ValidationError(errors)
    try:
        spec_fields = _ServiceSchema().load(body)
    except ValidationError as exc:
        errors.update(exc.messages_dict)
    if errors:
        raise ValidationError(errors)
    return ServiceSpec(id=str(service_id), **spec_fields)


class _ControlPlaneSchema(Schema):
    """The ``control-plane`` mapping (LlamaDeploy's ``ControlPlaneConfig`` fields)."""

    # No load_default here: ControlPlaneSpec holds the defaults.
    services_store_key = fields.String()
    tasks_store_key = fields.String()
    session_store_key = fields.String()
    step_interval = fields.Float(validate=validate.Range(min=0, min_inclusive=False))
    host = fields.String()
    port = _port()
    internal_host = fields.String(allow_none=True)
    internal_port = _port(allow_none=True)
    running = fields.Boolean()
    cors_origins = fields.List(fields.String(), allow_none=True)
    topic_namespace = fields.String()
    state_store_uri = fields.String(allow_none=True)
    use_tls = fields.Boolean()

    @post_load
    def _build(self, data: dict[str, Any], **kwargs: Any) -> ControlPlaneSpec:
        if data.get("cors_origins") is not None:
            data["cors_origins"] = tuple(data["cors_origins"])
        return ControlPlaneSpec(**data)


class _QueueSchema(Schema):
    """Base of the ``message-queue`` schemas: the discriminating ``type``."""

    type = fields.String()


class _SimpleQueueSchema(_QueueSchema):
    """Options of LlamaDeploy's own HTTP message queue."""

    host = fields.String(load_default="127.0.0.1")
    port = _port(load_default=8001)
    client_kwargs = fields.Dict(keys=fields.String(), load_default=dict)
    raise_exceptions = fields.Boolean(load_default=False)
    use_ssl = fields.Boolean(load_default=False)


class _RedisQueueSchema(_QueueSchema):
    """Options of the Redis message queue."""

    url = fields.String(load_default="redis://localhost:6379")
    host = _maybe(fields.String)
    port = _port(load_default=None)
    db = _maybe(fields.Integer, strict=True)
    username = _maybe(fields.String)
    password = _maybe(fields.String)
    ssl = _maybe(fields.Boolean)
    exclusive_mode = fields.Boolean(load_default=False)


class _RabbitMQQueueSchema(_QueueSchema):
    """Options of the RabbitMQ message queue."""

    url = fields.String(load_default="amqp://guest:guest@localhost/")
    exchange_name = fields.String(load_default="llama-deploy")
    username = _maybe(fields.String)
    password = _maybe(fields.String)
    host = _maybe(fields.String)
    port = _port(load_default=None)
    vhost = _maybe(fields.String)
    secure = _maybe(fields.Boolean)


class _KafkaQueueSchema(_QueueSchema):
    """Options of the Kafka message queue."""

    url = fields.String(load_default="localhost:9092")
    host = _maybe(fields.String)
    port = _port(load_default=None)


class _AWSQueueSchema(_QueueSchema):
    """Options of the AWS (SNS/SQS) message queue."""

    aws_region = fields.String(load_default="us-east-1")
    aws_access_key_id = _maybe(fields.String)
    aws_secret_access_key = _maybe(fields.String)


class _SolaceQueueSchema(_QueueSchema):
    """Options of the Solace message queue."""

    host = fields.String(load_default="")
    vpn_name = fields.String(load_default="")
    username = fields.String(load_default="")
    password = fields.String(load_default="")
    host_secured = fields.String(load_default="")
    is_queue_temporary = fields.Boolean(load_default=True)


_QUEUE_SCHEMAS: dict[str, type[_QueueSchema]] = {
    "simple": _SimpleQueueSchema,
    "redis": _RedisQueueSchema,
    "rabbitmq": _RabbitMQQueueSchema,
    "kafka": _KafkaQueueSchema,
    "aws": _AWSQueueSchema,
    "solace": _SolaceQueueSchema,
}
MESSAGE_QUEUE_TYPES = tuple(_QUEUE_SCHEMAS)


def _load_message_queue(document: Mapping[str, Any]) -> MessageQueueSpec:
    """Validate a ``message-queue`` mapping with the schema its ``type`` selects."""
    # LlamaDeploy's default queue is the simple one, so a missing type means simple.
    queue_type = document.get("type", "simple")
    schema = _QUEUE_SCHEMAS.get(queue_type) if isinstance(queue_type, str) else None
    if schema is None:
        reason = f"Unknown message queue type {queue_type!r}; must be one of: "
        raise ValidationError({"type": [reason + ", ".join(MESSAGE_QUEUE_TYPES) + "."]})
    options = schema().load(document)
    options.pop("type", None)
    return MessageQueueSpec(type=queue_type, options=options)


class _MessageQueueField(fields.Field):
    """The ``message-queue`` mapping, whose fields depend on its ``type``."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> MessageQueueSpec:
        if not isinstance(value, Mapping):
            raise ValidationError("Not a valid mapping.")
        return _load_message_queue(value)


class DeploymentSchema(Schema):
    """The whole deployment document."""

    name = fields.String(required=True, validate=check_safe_name)
    # LlamaDeploy requires the key but is happy with {}; null is taken as {} too.
    control_plane = fields.Nested(
        _ControlPlaneSchema, data_key="control-plane", required=True, allow_none=True
    )
    message_queue = _MessageQueueField(data_key="message-queue", allow_none=True)
    default_service = fields.String(data_key="default-service", allow_none=True)
    services = _ServiceMap(required=True)
    ui = fields.Nested(_UiSchema, allow_none=True)

    @post_load
    def _build(self, data: dict[str, Any], **kwargs: Any) -> DeploymentSpec:
        ui = data.get("ui")
        return DeploymentSpec(
            name=data["name"],
            control_plane=data.get("control_plane") or ControlPlaneSpec(),
            message_queue=data.get("message_queue") or _load_message_queue({}),
            default_service=data.get("default_service"),
            services=data["services"],
            ui=None if ui is None else ServiceSpec(id=UI_SERVICE_ID, **ui),
        )
