"""Deployment spec: LlamaDeploy's deployment YAML, validated into frozen dataclasses.

Every file LlamaDeploy (v0.8.1, and v0.9's ``location``/``import-path``/``sync_policy``
spellings) documents is read as is, except where it would fail later anyway; those fail here,
with the field and the reason:

- ``docker`` sources (LlamaDeploy had no way to deploy them);
- a ``default-service`` that names no service (LlamaDeploy only warned);
- a service with a source but no ``path``/``import-path`` (LlamaDeploy failed at deploy time);
- unknown keys, so that a typo does not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import enum
import keyword
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

import yaml
from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from config.errors import DeploymentSpecError

__all__ = [
    "MESSAGE_QUEUE_TYPES",
    "SYNC_POLICIES",
    "UI_SERVICE_ID",
    "ControlPlaneSpec",
    "DeploymentSpec",
    "MessageQueueSpec",
    "ServiceSpec",
    "SourceSpec",
    "SourceType",
    "load_deployment",
    "load_deployment_file",
]

SYNC_POLICIES = ("replace", "merge", "skip", "fail")
UI_SERVICE_ID = "ui"


class SourceType(str, enum.Enum):
    """Where a service's code comes from."""

    LOCAL = "local"
    GIT = "git"
    DOCKER = "docker"


# ---------------------------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSpec:
    """Where to fetch a service's code: a folder next to the YAML file or a git repository."""

    type: SourceType
    location: str
    sync_policy: str | None = None

    @property
    def git_url(self) -> str:
        """The clone URL of a git location, without its ``@branch`` suffix."""
        return _split_git_location(self.location)[0]

    @property
    def git_ref(self) -> str | None:
        """The branch after the ``@`` that ends a git location, or None."""
        return _split_git_location(self.location)[1]

    def to_dict(self) -> dict[str, Any]:
        """Return the ``source`` mapping in the YAML's spelling."""
        # ``name`` is the spelling that every LlamaDeploy version reads.
        document: dict[str, Any] = {"type": self.type.value, "name": self.location}
        if self.sync_policy is not None:
            document["sync_policy"] = self.sync_policy
        return document


@dataclass(frozen=True)
class ServiceSpec:
    """One workflow of a deployment (or the deployment's UI)."""

    id: str
    name: str
    source: SourceSpec | None = None
    import_path: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    env_files: tuple[str, ...] = ()
    python_dependencies: tuple[str, ...] = ()
    host: str | None = None
    port: int | None = None
    ts_dependencies: dict[str, str] = field(default_factory=dict)

    @property
    def module_dir(self) -> str:
        """The folder of the workflow module, relative to the source root ("" for the root)."""
        return self._target.rpartition("/")[0]

    @property
    def module(self) -> str:
        """The name of the module that defines the workflow."""
        return self._target.rpartition("/")[2]

    @property
    def attr(self) -> str:
        """The name of the module attribute that holds the workflow instance."""
        return (self.import_path or "").partition(":")[2]

    @property
    def _target(self) -> str:
        """The import path without its attribute: ``dir/module``."""
        return (self.import_path or "").partition(":")[0]

    def to_dict(self) -> dict[str, Any]:
        """Return the service mapping in the YAML's spelling (the id is its key, not a field)."""
        document: dict[str, Any] = {
            "name": self.name,
            "source": None if self.source is None else self.source.to_dict(),
            "path": self.import_path,
            "host": self.host,
            "port": self.port,
            "env": dict(self.env),
            "env-files": list(self.env_files),
            "python-dependencies": list(self.python_dependencies),
            "ts-dependencies": dict(self.ts_dependencies),
        }
        return _without_nones(document)


@dataclass(frozen=True)
class ControlPlaneSpec:
    """The ``control-plane`` section, with LlamaDeploy's defaults."""

    services_store_key: str = "services"
    tasks_store_key: str = "tasks"
    session_store_key: str = "sessions"
    step_interval: float = 0.1
    host: str = "127.0.0.1"
    port: int = 8000
    internal_host: str | None = None
    internal_port: int | None = None
    running: bool = True
    cors_origins: tuple[str, ...] | None = None
    topic_namespace: str = "llama_deploy"
    state_store_uri: str | None = None
    use_tls: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return the ``control-plane`` mapping."""
        document = dataclasses.asdict(self)
        if self.cors_origins is not None:
            document["cors_origins"] = list(self.cors_origins)
        return _without_nones(document)


@dataclass(frozen=True)
class MessageQueueSpec:
    """The ``message-queue`` section: its type and every option of that type, defaults filled."""

    type: str
    options: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Return the ``message-queue`` mapping."""
        return _without_nones({"type": self.type, **self.options})


@dataclass(frozen=True)
class DeploymentSpec:
    """A validated deployment: its services and the settings LlamaDeploy's YAML carries."""

    name: str
    control_plane: ControlPlaneSpec
    message_queue: MessageQueueSpec
    default_service: str | None
    services: dict[str, ServiceSpec]
    ui: ServiceSpec | None = None

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> DeploymentSpec:
        """Validate an already parsed deployment mapping; raise DeploymentSpecError if invalid."""
        if not isinstance(document, Mapping):
            raise DeploymentSpecError({"yaml": [_not_a_mapping(document)]})
        try:
            spec: DeploymentSpec = _DeploymentSchema().load(document)
        except ValidationError as exc:
            raise DeploymentSpecError(_flatten(exc.messages)) from exc
        return spec

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe mapping in the YAML's spelling that ``from_dict`` reads back."""
        document: dict[str, Any] = {
            "name": self.name,
            "control-plane": self.control_plane.to_dict(),
            "message-queue": self.message_queue.to_dict(),
            "default-service": self.default_service,
            "services": {key: service.to_dict() for key, service in self.services.items()},
            "ui": None if self.ui is None else self.ui.to_dict(),
        }
        return _without_nones(document)


def load_deployment(text: str | bytes) -> DeploymentSpec:
    """Parse and validate a deployment YAML document; raise DeploymentSpecError if invalid."""
    return DeploymentSpec.from_dict(_parse_yaml(text))


def load_deployment_file(path: str | os.PathLike[str]) -> DeploymentSpec:
    """Read, parse and validate a deployment YAML file (OSError if it cannot be read)."""
    with open(path, "rb") as stream:
        return load_deployment(stream.read())


# ---------------------------------------------------------------------------------------------
# Parsing and error reporting
# ---------------------------------------------------------------------------------------------


def _parse_yaml(text: str | bytes) -> Mapping[str, Any]:
    """Turn YAML text into a mapping, reporting syntax errors with their position."""
    try:
        document = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        raise DeploymentSpecError({"yaml": [_describe_yaml_error(exc)]}) from exc
    except yaml.YAMLError as exc:
        raise DeploymentSpecError({"yaml": [f"Not valid YAML: {exc}"]}) from exc
    if document is None:
        reason = "The document is empty; expected a mapping with name, control-plane and services."
        raise DeploymentSpecError({"yaml": [reason]})
    if not isinstance(document, Mapping):
        raise DeploymentSpecError({"yaml": [_not_a_mapping(document)]})
    return document


def _describe_yaml_error(exc: Any) -> str:
    """Say what is wrong in YAML terms, and where (1-based line and column)."""
    problem = exc.problem or str(exc)
    mark = exc.problem_mark
    if mark is None:
        return f"Not valid YAML: {problem}."
    return f"Not valid YAML: {problem} at line {mark.line + 1}, column {mark.column + 1}."


def _not_a_mapping(document: object) -> str:
    return f"The document must be a mapping of deployment fields, not {_kind(document)}."


def _kind(value: object) -> str:
    """Name a parsed YAML value's kind the way a YAML author would."""
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a scalar ({type(value).__name__})"


def _flatten(messages: Any, path: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Turn marshmallow's nested error messages into ``{"a.b.c": [reasons]}``."""
    flat: dict[str, list[str]] = {}
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            # Reasons about a whole object ("_schema") belong to the object's own path.
            segment = () if key == "_schema" else (str(key),)
            for field_path, reasons in _flatten(value, path + segment).items():
                flat.setdefault(field_path, []).extend(reasons)
    elif isinstance(messages, list | tuple):
        for item in messages:
            for field_path, reasons in _flatten(item, path).items():
                flat.setdefault(field_path, []).extend(reasons)
    else:
        flat[".".join(path) or "yaml"] = [str(messages)]
    return flat


def _without_nones(document: dict[str, Any]) -> dict[str, Any]:
    """Drop unset optional fields: a missing key loads back to the same default."""
    return {key: value for key, value in document.items() if value is not None}


# ---------------------------------------------------------------------------------------------
# Field rules
# ---------------------------------------------------------------------------------------------

_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
_PORT_RANGE = validate.Range(min=1, max=65535)


def _check_safe_name(value: str) -> None:
    """Accept names that are safe as a URL path segment and as a folder name."""
    if not value:
        raise ValidationError("Must not be empty.")
    if not _SAFE_NAME.fullmatch(value):
        raise ValidationError(
            f"Invalid name {value!r}: use only letters, digits, '-', '_' and '.', "
            "because it is used in URL paths and as a folder name."
        )
    if value in {".", ".."}:
        raise ValidationError(f"Invalid name {value!r}: it cannot name a folder.")


def _check_source_type(value: str) -> None:
    """Accept the source types Celeriac can deploy."""
    if value == SourceType.DOCKER.value:
        raise ValidationError("docker sources are not supported; use local or git.")
    if value not in {SourceType.LOCAL.value, SourceType.GIT.value}:
        raise ValidationError(f"Unknown source type {value!r}; must be one of: local, git.")


def _is_absolute(path: str) -> bool:
    # Windows drive paths count too: the YAML may have been written on either system.
    return PurePosixPath(path).is_absolute() or PureWindowsPath(path).is_absolute()


def _check_module_dir(value: str) -> None:
    """Accept a folder relative to the synced source root that does not climb out of it."""
    if _is_absolute(value):
        raise ValidationError(f"{value!r} must be relative to the service's source folder.")
    if ".." in PurePosixPath(value).parts:
        raise ValidationError(f"{value!r} must not leave the service's source folder ('..').")


def _check_import_path(value: str) -> None:
    """Accept ``[dir/]module:attr`` with a Python module name and attribute name."""
    target, colon, attr = value.partition(":")
    module_dir, _, module = target.rpartition("/")
    if not (colon and _is_identifier(attr) and all(map(_is_identifier, module.split(".")))):
        raise ValidationError(
            f"Invalid import path {value!r}: expected '[dir/]module:attr', "
            "where module and attr are Python names (e.g. 'src/workflow:echo_workflow')."
        )
    if module_dir:
        _check_module_dir(module_dir)


def _is_identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def _check_ui_path(value: str) -> None:
    """Accept the UI's path: a folder of the UI source, not a Python import path."""
    if not value:
        raise ValidationError("Must not be empty.")
    _check_module_dir(value)


def _check_local_location(location: str) -> None:
    """Accept a folder relative to the deployment's base path (the YAML file's folder)."""
    if _is_absolute(location):
        raise ValidationError(
            f"{location!r} must be relative to the deployment's base path "
            "(the folder of the deployment file)."
        )


def _check_git_location(location: str) -> None:
    """Accept a clone URL with an optional non-empty ``@branch`` suffix."""
    url, ref = _split_git_location(location)
    if not url or any(char.isspace() for char in location):
        raise ValidationError(f"Invalid git location {location!r}: expected a clone URL.")
    if ref == "":
        raise ValidationError(f"Invalid git location {location!r}: the branch after '@' is empty.")


def _split_git_location(location: str) -> tuple[str, str | None]:
    """Split ``url@ref`` on the last ``@`` of the repository path."""
    # The host part can hold an "@" of its own ("git@host:", "https://user@host/"), so only an
    # "@" after it can start a ref.
    at = location.rfind("@", _repository_path_start(location))
    if at == -1:
        return location, None
    return location[:at], location[at + 1 :]


def _repository_path_start(location: str) -> int:
    """Index where the repository path of a clone URL starts (after any user and host)."""
    scheme_end = location.find("://")
    if scheme_end != -1:
        slash = location.find("/", scheme_end + 3)
        return len(location) if slash == -1 else slash
    # scp-like "user@host:path": the host part ends at the first ":" (or "/" if none).
    ends = [index for index in (location.find(":"), location.find("/")) if index != -1]
    return min(ends) if ends else 0


def _check_alias(data: Mapping[str, Any], old: str, new: str) -> None:
    """Refuse an old and a new spelling of one field that disagree."""
    if data.get(old) is not None and data.get(new) is not None and data[old] != data[new]:
        raise ValidationError(
            f"Conflicts with {old!r} ({data[new]!r} != {data[old]!r}); "
            f"{old!r} is the older spelling of {new!r}, give only one.",
            new,
        )


# ---------------------------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------------------------


def _port(**kwargs: Any) -> fields.Integer:
    """A TCP port number; YAML reads ports as integers, so no string coercion."""
    return fields.Integer(strict=True, validate=_PORT_RANGE, **kwargs)


def _maybe(field_type: type[fields.Field[Any]], **kwargs: Any) -> fields.Field[Any]:
    """An optional option whose default is None, as in LlamaDeploy's queue configs."""
    return field_type(load_default=None, **kwargs)


class _StringMap(fields.Field[dict[str, str]]):
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
                errors[key] = [f"Must be a string, number or boolean, not {_kind(item)}."]
        if errors:
            raise ValidationError(errors)
        return result


class _SourceSchema(Schema):
    """A service's ``source`` mapping."""

    type = fields.String(required=True, validate=_check_source_type)
    name = fields.String()
    location = fields.String()
    sync_policy = fields.String(allow_none=True, validate=validate.OneOf(SYNC_POLICIES))

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _check_location(
        self, data: dict[str, Any], original: Mapping[str, Any], **kwargs: Any
    ) -> None:
        _check_alias(data, "name", "location")
        location = data.get("location", data.get("name"))
        if location is None:
            # An unusable name or location was reported already by its own field.
            if "name" not in original and "location" not in original:
                raise ValidationError("Missing data for required field.", "name")
            return
        field_name = "location" if "location" in data else "name"
        checks = {"local": _check_local_location, "git": _check_git_location}
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


class _ServiceSchema(Schema):
    """One ``services`` entry (without its id, which is the entry's key)."""

    name = fields.String(required=True)
    source = fields.Nested(_SourceSchema, allow_none=True)
    path = fields.String(allow_none=True, validate=_check_import_path)
    import_path = fields.String(
        data_key="import-path", allow_none=True, validate=_check_import_path
    )
    host = fields.String(allow_none=True)
    port = _port(allow_none=True)
    env = _StringMap(allow_none=True)
    env_files = fields.List(fields.String(), data_key="env-files", allow_none=True)
    python_dependencies = fields.List(
        fields.String(), data_key="python-dependencies", allow_none=True
    )
    ts_dependencies = _StringMap(data_key="ts-dependencies", allow_none=True)

    #: Whether a service with a source must say what to import from it.
    requires_import_path = True

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _check_import_path_given(
        self, data: dict[str, Any], original: Mapping[str, Any], **kwargs: Any
    ) -> None:
        _check_alias(data, "path", "import_path")
        given = original.get("path") is not None or original.get("import-path") is not None
        # LlamaDeploy only found out at deploy time that it had nothing to import; say it now.
        if self.requires_import_path and original.get("source") is not None and not given:
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
    path = fields.String(allow_none=True, validate=_check_ui_path)
    import_path = fields.String(data_key="import-path", allow_none=True, validate=_check_ui_path)

    requires_import_path = False


class _ServiceMap(fields.Field[dict[str, ServiceSpec]]):
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
            _check_safe_name(service_id)
        except ValidationError as exc:
            errors["_schema"] = exc.messages
    if not isinstance(body, Mapping):
        errors.setdefault("_schema", []).append(f"Must be a mapping, not {_kind(body)}.")
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


class _MessageQueueField(fields.Field[MessageQueueSpec]):
    """The ``message-queue`` mapping, whose fields depend on its ``type``."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> MessageQueueSpec:
        if not isinstance(value, Mapping):
            raise ValidationError("Not a valid mapping.")
        return _load_message_queue(value)


class _DeploymentSchema(Schema):
    """The whole deployment document."""

    name = fields.String(required=True, validate=_check_safe_name)
    # LlamaDeploy requires the key but is happy with {}; null is taken as {} too.
    control_plane = fields.Nested(
        _ControlPlaneSchema, data_key="control-plane", required=True, allow_none=True
    )
    message_queue = _MessageQueueField(data_key="message-queue", allow_none=True)
    default_service = fields.String(data_key="default-service", allow_none=True)
    services = _ServiceMap(required=True)
    ui = fields.Nested(_UiSchema, allow_none=True)

    @validates_schema(skip_on_field_errors=False)
    def _check_default_service(self, data: dict[str, Any], **kwargs: Any) -> None:
        default, services = data.get("default_service"), data.get("services")
        # LlamaDeploy only logged a warning here; tasks without a service then had nowhere to go.
        if default is not None and services is not None and default not in services:
            known = ", ".join(services)
            raise ValidationError(
                f"{default!r} is not a service of this deployment; must be one of: {known}.",
                "default-service",
            )

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
