"""Loading a deployment: YAML text, a file or a parsed mapping, validated into the spec, with
every problem reported by field path."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import yaml
from marshmallow import ValidationError

from config.deployment.reading import YamlLimits, YamlTooLarge, read_yaml
from config.deployment.rules import kind
from config.deployment.schema import DeploymentSchema
from config.deployment.spec import DeploymentSpec
from config.errors import DeploymentSpecError, NestedTooDeeply


def load_deployment(text: str | bytes, limits: YamlLimits | None = None) -> DeploymentSpec:
    """Parse and validate a deployment YAML document within ``limits`` (the defaults if not
    given); raise DeploymentSpecError if invalid."""
    return load_deployment_mapping(_parse_yaml(text, limits or YamlLimits()))


def load_deployment_file(
    path: str | os.PathLike[str], limits: YamlLimits | None = None
) -> DeploymentSpec:
    """Read, parse and validate a deployment YAML file (OSError if it cannot be read)."""
    with open(path, "rb") as stream:
        return load_deployment(stream.read(), limits)


def load_deployment_mapping(document: Mapping[str, Any]) -> DeploymentSpec:
    """Validate an already parsed deployment mapping; raise DeploymentSpecError if invalid."""
    if not isinstance(document, Mapping):
        raise DeploymentSpecError({"yaml": [_not_a_mapping(document)]})
    try:
        spec: DeploymentSpec = DeploymentSchema().load(document)
    except ValidationError as exc:
        raise DeploymentSpecError(_in_document_order(_flatten(exc.messages), document)) from exc
    return spec


def _parse_yaml(text: str | bytes, limits: YamlLimits) -> Mapping[str, Any]:
    """Turn YAML text into a mapping, reporting syntax errors with their position."""
    try:
        document = read_yaml(text, limits)
    except (YamlTooLarge, NestedTooDeeply) as exc:
        raise DeploymentSpecError({"yaml": [f"Refused: {exc}."]}) from exc
    except yaml.MarkedYAMLError as exc:
        raise DeploymentSpecError({"yaml": [_describe_yaml_error(exc)]}) from exc
    except yaml.YAMLError as exc:
        raise DeploymentSpecError({"yaml": [f"Not valid YAML: {exc}"]}) from exc
    except ValueError as exc:
        # PyYAML builds some scalars with Python's own constructors, which refuse values the
        # YAML grammar allows: a date like 2024-13-40, an integer of more than 4,300 digits.
        raise DeploymentSpecError({"yaml": [f"A value cannot be read: {exc}."]}) from exc
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
    return f"The document must be a mapping of deployment fields, not {kind(document)}."


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


def _in_document_order(
    flat: dict[str, list[str]], document: Mapping[str, Any]
) -> dict[str, list[str]]:
    """The errors in the order of their fields in the document (absent fields last, by name).

    marshmallow 3 before 3.26 collects a schema's fields in a ``set`` unless the schema is
    ``ordered`` (an option 3.26 deprecates and 4 removed), so its errors came in an order that
    changed from one process to the next.
    """

    def position(field_path: str) -> tuple[tuple[int, str], ...]:
        node: Any = document
        keys: list[tuple[int, str]] = []
        for segment in field_path.split("."):
            names = [str(key) for key in node] if isinstance(node, Mapping) else []
            if segment in names:
                keys.append((names.index(segment), segment))
                node = list(node.values())[names.index(segment)]
            else:
                keys.append((len(names), segment))
                node = None
        return tuple(keys)

    return {field_path: flat[field_path] for field_path in sorted(flat, key=position)}
