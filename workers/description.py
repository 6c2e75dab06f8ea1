"""What a workflow is, as JSON for the control plane: its events' schemas and its graph."""

from __future__ import annotations

from typing import Any

from workflows import Workflow
from workflows.representation import get_workflow_representation

from workers.loader import public_name


def describe_workflow(workflow: Workflow) -> dict[str, Any]:
    """The start and stop events' JSON schemas, every event's schema and qualified name (as
    the user's folder spells it), and the workflow's graph."""
    events = []
    for cls in workflow.events:
        events.append(
            {
                "name": cls.__name__,
                "qualified_name": public_name(f"{cls.__module__}.{cls.__qualname__}"),
                "schema": cls.model_json_schema(),
            }
        )
    # The stop event class is typed with the workflow's result type; it is a pydantic model.
    stop: Any = workflow.stop_event_class
    return {
        "start": workflow.start_event_class.model_json_schema(),
        "stop": stop.model_json_schema(),
        "events": events,
        "graph": get_workflow_representation(workflow).model_dump(mode="json"),
    }
