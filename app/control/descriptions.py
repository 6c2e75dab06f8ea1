"""What a service's workflow is (event schemas, graph): asked of a worker, kept per version.

The control plane never imports user code: a worker of the service describes its workflow on
request (``celeriac.service.describe``), the answer is stored with the deployment version it
belongs to, and later requests read it until the deployment changes. A reload that keeps
the replaced version for durable tasks (``app.control.versions``) keeps its descriptions too.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select

from app.control.dispatch import Dispatcher
from app.control.waiter import Outcome, TaskWaiter
from app.db import Database
from app.errors import NotFound, Unavailable, WorkflowNotDescribed
from app.models import Deployment
from app.models.base import table_of
from app.models.deployment import DeploymentVersion, Service
from workers.protocol import Describe, ServiceDescribed

_services = table_of(Service)
_deployments = table_of(Deployment)
_kept = table_of(DeploymentVersion)
_KEPT = (
    select(_kept.c.descriptions)
    .join(_deployments, _deployments.c.id == _kept.c.deployment_id)
    .where(_deployments.c.name == bindparam("deployment"), _kept.c.version == bindparam("version"))
)
_READ = (
    select(_deployments.c.version, _services.c.description, _services.c.described_version)
    .select_from(_deployments.outerjoin(_services, _services.c.deployment_id == _deployments.c.id))
    .where(_deployments.c.name == bindparam("deployment"))
)

#: Seconds a request waits for a worker's description before answering 503.
DESCRIBE_WAIT = 15.0


class Descriptions:
    """Reads a service's description, asking a worker for it when none is stored."""

    def __init__(
        self, db: Database, dispatcher: Dispatcher, waiter: TaskWaiter, wait: float = DESCRIBE_WAIT
    ) -> None:
        self._db = db
        self._dispatcher = dispatcher
        self._waiter = waiter
        self._wait = wait

    def get(self, deployment: str, service: str) -> dict[str, Any]:
        """The service's description (``start``, ``stop``, ``events``, ``graph``)."""
        version, stored = self._stored(deployment, service)
        describe = Describe(deployment=deployment, service=service, version=version)
        if stored is None:
            key = _key(deployment, service)
            self._dispatcher.describe(describe)

            def look() -> Outcome | None:
                found = self._stored(deployment, service)[1]
                return None if found is None else Outcome("described", found, None)

            outcome = self._waiter.wait(key, self._wait, look, check_first=False)
            if outcome is None:
                raise Unavailable(
                    f"no worker of service {service!r} described its workflow within "
                    f"{self._wait:g} s; is one running "
                    f"(celeriac worker --deployment {deployment})?",
                    errors={"service": service},
                )
            stored = outcome.result
        if stored.get("error"):
            # The cause may pass (a clone that failed, a worker of an older version): this
            # request gets the error, and a worker is asked again for the next one.
            self._dispatcher.describe(describe)
            error = stored["error"]
            raise WorkflowNotDescribed(
                f"the workflow of service {service!r} could not be loaded: {error.get('message')}",
                errors={"service": service, "error": error},
            )
        return stored

    def of_version(
        self, deployment: str, service: str, version: int | None
    ) -> dict[str, Any] | None:
        """The service's description in ``version`` of the deployment: a kept earlier
        version's as it was kept (None if no worker had described it), else the current
        one's (:meth:`get`)."""
        if version is not None:
            with self._db.peek() as conn:
                kept = conn.execute(_KEPT, {"deployment": deployment, "version": version}).first()
            if kept is not None:
                found = (kept.descriptions or {}).get(service)
                return found if isinstance(found, dict) and not found.get("error") else None
        return self.get(deployment, service)

    def record(self, message: ServiceDescribed) -> None:
        """Keep a worker's description, if the deployment still has that version."""
        stored = message.description if message.error is None else {"error": message.error}
        current = (
            select(_deployments.c.id)
            .where(
                _deployments.c.name == message.deployment,
                _deployments.c.version == message.version,
            )
            .scalar_subquery()
        )
        with self._db.connect() as conn:
            conn.execute(
                _services.update()
                .where(_services.c.deployment_id == current, _services.c.name == message.service)
                .values(description=stored, described_version=message.version)
            )
        self._waiter.notify(_key(message.deployment, message.service))

    def _stored(self, deployment: str, service: str) -> tuple[int, dict[str, Any] | None]:
        """The deployment's version and the service's description of that version, if any."""
        with self._db.peek() as conn:
            rows = conn.execute(
                _READ.add_columns(_services.c.name), {"deployment": deployment}
            ).all()
        if not rows:
            raise NotFound(f"deployment {deployment!r} not found")
        for version, description, described_version, name in rows:
            if name == service:
                return version, description if described_version == version else None
        known = ", ".join(sorted(str(r.name) for r in rows if r.name))
        raise NotFound(
            f"workflow {service!r} not found in deployment {deployment!r} (workflows: {known})"
        )


def _key(deployment: str, service: str) -> str:
    """What waiters of a description listen on (a waiter of descriptions only)."""
    return f"describe:{deployment}:{service}"
