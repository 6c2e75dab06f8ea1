"""Which events a task may be sent: checked before anything is stored or sent.

A task's workflow takes the events its steps declare and a person's answer
(``HumanResponseEvent``), by the names ``workers.protocol.event_names`` gives them; the worker
decodes nothing else. The control plane never imports user code, so it reads the declared
events from the service's description (asked of a worker once per deployment version, see
``app.control.descriptions``), and checks an event's fields against the event's JSON schema
as far as the fields' names and JSON types go.
"""

from __future__ import annotations

from typing import Any

from app.control.descriptions import Descriptions
from app.errors import InvalidInput
from workers.protocol import HUMAN_RESPONSE_EVENT, event_names

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


class SendableEvents:
    """Checks an event sent into a task against its workflow's declared events."""

    def __init__(self, descriptions: Descriptions) -> None:
        self._descriptions = descriptions

    def check(
        self,
        deployment: str,
        service: str,
        event: dict[str, Any],
        field: str,
        version: int | None = None,
    ) -> str:
        """The qualified name of the declared event that ``event`` (llama-index's JSON of one:
        ``qualified_name`` and ``value``) names; InvalidInput on ``field`` if it names none,
        or if its fields do not fit the event's schema.

        ``version``: the deployment version the task is pinned to (a durable task's). An
        earlier version kept without a description of the service leaves the check to the
        worker that runs it, which decodes only the events its workflow takes."""
        name = event["qualified_name"]
        value = event.get("value", {})
        if not isinstance(value, dict):
            raise InvalidInput(
                "the event's value must be an object of its fields",
                errors={field: [f"value: expected an object, got {type(value).__name__}"]},
            )
        description = self._descriptions.of_version(deployment, service, version)
        if description is None:
            return str(name)
        declared = _declared(description)
        names = event_names(declared)
        if name not in names:
            takes = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in declared}))
            raise InvalidInput(
                f"{name!r} is not an event the workflow of service {service!r} takes",
                errors={field: [f"{name!r} is not one of its events: {takes}"]},
            )
        qualified = names[name]
        problems = _misfits(_fields(value), declared[qualified])
        if problems:
            raise InvalidInput(
                f"the fields of the {qualified.rsplit('.', 1)[-1]} sent do not fit it",
                errors={field: problems},
            )
        return qualified


def _declared(description: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The events a service's workflow takes, by qualified name, with their schemas."""
    declared: dict[str, dict[str, Any]] = {HUMAN_RESPONSE_EVENT: {}}
    for item in description.get("events", []):
        declared[str(item["qualified_name"])] = item.get("schema") or {}
    return declared


def _fields(value: dict[str, Any]) -> dict[str, Any]:
    """An event's fields, with the extra fields pydantic keeps under ``_data`` spread out."""
    extra = value.get("_data")
    if not isinstance(extra, dict):
        return value
    return {**extra, **{k: v for k, v in value.items() if k != "_data"}}


def _misfits(fields: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """What in ``fields`` the JSON schema of an event refuses: missing required fields, and
    fields of the wrong JSON type (where the schema names plain types)."""
    problems = [
        f"{name}: missing (a required field)"
        for name in schema.get("required", [])
        if name not in fields
    ]
    properties = schema.get("properties") or {}
    for name, given in fields.items():
        wanted = _types_of(properties.get(name))
        if wanted and not any(_is_of(given, json_type) for json_type in wanted):
            problems.append(f"{name}: expected {' or '.join(wanted)}, got {_json_type_of(given)}")
    return problems


def _types_of(schema: Any) -> list[str]:
    """The plain JSON types a field's schema allows (``type``, or ``anyOf`` of plain types);
    empty when the schema says more than types, which the worker then checks."""
    if not isinstance(schema, dict):
        return []
    options = schema.get("anyOf", [schema])
    types: list[str] = []
    for option in options:
        if not isinstance(option, dict) or "type" not in option:
            return []
        kind = option["type"]
        types.extend(kind if isinstance(kind, list) else [kind])
    return [t for t in types if t in _JSON_TYPES] if all(t in _JSON_TYPES for t in types) else []


def _is_of(value: Any, json_type: str) -> bool:
    if isinstance(value, bool) and json_type in {"integer", "number"}:
        return False
    return isinstance(value, _JSON_TYPES[json_type])


def _json_type_of(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _is_of(value, name):
            return name
    return type(value).__name__
