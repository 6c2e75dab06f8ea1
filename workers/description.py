"""What a workflow is, as JSON for the control plane: its events' schemas and its graph."""

from __future__ import annotations

from typing import Any

from workflows import Workflow
from workflows.representation import get_workflow_representation

from workers.errors import ControlPlaneUnreachable
from workers.loader import public_name
from workers.protocol import Describe, ServiceDescribed
from workers.runtime import ServiceRuntime


def describe_workflow(workflow: Workflow) -> dict[str, Any]:
    """The start and stop events' JSON schemas, every event's schema and qualified name (as
    the user's folder spells it), and the workflow's graph."""
    events = [
        {
            "name": cls.__name__,
            "qualified_name": public_name(f"{cls.__module__}.{cls.__qualname__}"),
            "schema": _schema(cls),
        }
        for cls in workflow.events
    ]
    # The stop event class is typed with the workflow's result type; it is a pydantic model.
    stop: Any = workflow.stop_event_class
    return {
        "start": _schema(workflow.start_event_class),
        "stop": _schema(stop),
        "events": events,
        "graph": _graph(workflow),
    }


def _graph(workflow: Workflow) -> dict[str, Any]:
    """The workflow's graph, or why it cannot be drawn (an event without a JSON schema)."""
    try:
        graph: dict[str, Any] = get_workflow_representation(workflow).model_dump(mode="json")
    except Exception as exc:
        return {"error": f"the workflow's graph cannot be drawn: {type(exc).__name__}: {exc}"}
    return graph


def _schema(cls: Any) -> dict[str, Any]:
    """An event's JSON schema; ``{}`` for one that has none (a field of an arbitrary type),
    so that one such event does not hide the others."""
    try:
        schema: dict[str, Any] = cls.model_json_schema()
    except Exception:
        return {}
    return schema


def describe_service(runtime: ServiceRuntime, message: Describe) -> ServiceDescribed:
    """A worker's answer to ``Describe``: the description, or why the workflow cannot be
    loaded (ControlPlaneUnreachable goes up: the question is asked again later)."""
    description: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    try:
        loaded = runtime.load(message.deployment, message.service, message.version)
        description = describe_workflow(loaded.workflow)
    except ControlPlaneUnreachable:
        raise
    except Exception as exc:  # the user's code: report why it cannot be described
        error = {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__}
    return ServiceDescribed(
        deployment=message.deployment,
        service=message.service,
        version=message.version,
        description=description,
        error=error,
    )
