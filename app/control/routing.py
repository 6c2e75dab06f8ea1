"""Where a task's steps go: its service, and the message that starts it."""

from __future__ import annotations

from typing import Any

from app.errors import BadRequest, NotFound
from workers.protocol import RunStep


def route(deployment: str, spec: dict[str, Any], service_id: str | None) -> str:
    """The service that must run a task: the one named, else the deployment's default."""
    known = list(spec.get("services", {}))
    if not service_id:
        default = spec.get("default-service")
        if default not in known:
            # A default-service naming no service was only a warning at deploy time, as in
            # LlamaDeploy: a task relying on it is refused as if there were none.
            detail = f" (its default-service {default!r} is not one of its services)"
            raise BadRequest(
                f"no service_id given and deployment {deployment!r} has no default-service"
                + (detail if default else "")
            )
        return str(default)
    if service_id not in known:
        raise NotFound(
            f"service {service_id!r} not found in deployment {deployment!r} "
            f"(services: {', '.join(known)})"
        )
    return service_id


def first_step(
    task: Any,
    deployment: str,
    version: int,
    context: dict[str, Any] | None = None,
    keep_context: bool = False,
    *,
    fresh: bool = True,
) -> RunStep:
    """The message that starts a task (a ``Task`` or a row of ``tasks``): today a task is one
    workflow run on its service, in its session's Context, numbering its events from the
    task's ``first_seq``, under the task's controls (time limit, expiry, retry policy).
    ``fresh``: the run's first message (see ``RunStep.fresh``)."""
    controls = task.controls or {}
    return RunStep(
        id=task.id,  # one first step per task: its id names the message in Flower too
        task_id=task.id,
        session_id=task.session_id,
        deployment=deployment,
        service=task.service,
        input=task.input,
        version=version,
        context=context,
        keep_context=keep_context,
        # A task just inserted has no first_seq yet: its run is its first
        first_seq=task.first_seq or 0,
        run=task.run or 1,
        time_limit=controls.get("time-limit"),
        expires_at=None if task.expires_at is None else task.expires_at.timestamp(),
        retry=controls.get("retry"),
        durable=bool(controls.get("durable")),
        fresh=fresh,
    )
