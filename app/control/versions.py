"""Deployment versions kept for the durable tasks that started on them.

A durable run resumes from its journal, which names the steps and event classes of the code
it started on; a reload may change or rename them. So each durable task is pinned to the
version it started on (``tasks.pinned_version``), and a reload keeps the replaced version's
spec and base path (``deployment_versions``) while a task pinned to it has not ended. Workers
fetch a kept version by number (``GET /deployments/{d}/versions/{v}/spec``).

The version a reload replaces is kept whenever it has a durable service, not only when a task
pinned to it is seen: a task stored while the reload commits (it read the old version just
before) would otherwise be pinned to a version nobody kept. Each reload drops the kept versions
that no unfinished task needs (by then every task of theirs is visible), so the table holds the
versions still in use and the one last replaced; deleting a deployment deletes them with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session as DbSession

from app.db import Database
from app.errors import NotFound
from app.models import Deployment, DeploymentVersion, Task
from app.models.task import TERMINAL
from config.deployment import load_deployment_mapping
from workers.protocol import service_queue

#: The largest version number a deployment may have (its column is a 32-bit integer).
LARGEST_VERSION = 2**31 - 1


@dataclass(frozen=True)
class VersionSource:
    """One version of a deployment, as a worker loads it."""

    name: str
    version: int
    spec: dict[str, Any]
    base_path: str


def _pinned_versions(session: DbSession, deployment_id: int) -> set[int]:
    """The versions that durable tasks of the deployment, not ended, started on."""
    query = (
        select(Task.pinned_version)
        .where(
            Task.deployment_id == deployment_id,
            Task.pinned_version.is_not(None),
            Task.status.not_in([status.value for status in TERMINAL]),
        )
        .distinct()
    )
    return {int(version) for version in session.scalars(query) if version is not None}


def keep_replaced(session: DbSession, row: Deployment) -> None:
    """Before a reload replaces ``row``'s version: keep that version if it has a durable
    service, and drop the kept versions that no unfinished durable task needs any more."""
    needed = _pinned_versions(session, row.id)
    if any(service.durable for service in load_deployment_mapping(row.spec).services.values()):
        described = {
            service.name: service.description
            for service in row.services
            if service.described_version == row.version and service.description is not None
        }
        session.add(
            DeploymentVersion(
                deployment_id=row.id,
                version=row.version,
                spec=row.spec,
                base_path=row.base_path,
                descriptions=described,
            )
        )
    session.execute(
        delete(DeploymentVersion).where(
            DeploymentVersion.deployment_id == row.id,
            DeploymentVersion.version.not_in(needed | {row.version}),
        )
    )


class Versions:
    """Reads the versions of deployments: the current one, and those kept."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, name: str, version: int) -> VersionSource:
        """Version ``version`` of deployment ``name``, current or kept; :class:`NotFound`
        naming the version when it is neither (it was never made, or no task needs it)."""
        with self._db.read() as session:
            row = session.scalar(select(Deployment).where(Deployment.name == name))
            if row is None:
                raise NotFound(f"deployment {name!r} not found")
            if row.version == version:
                return VersionSource(row.name, row.version, row.spec, row.base_path)
            # (a number past the column's range is no version: never asked of the database)
            kept = (
                session.get(DeploymentVersion, (row.id, version))
                if 0 < version <= LARGEST_VERSION
                else None
            )
            if kept is None:
                raise NotFound(
                    f"deployment {name!r} has no version {version} any more (its current "
                    f"version is {row.version}; an earlier one is kept only while a durable "
                    "task that started on it has not ended)",
                    errors={"version": [f"version {version} is not kept"]},
                )
            return VersionSource(row.name, kept.version, kept.spec, kept.base_path)

    def kept(self, name: str) -> list[int]:
        """The numbers of ``name``'s kept earlier versions, oldest first."""
        with self._db.read() as session:
            query = (
                select(DeploymentVersion.version)
                .join(Deployment, Deployment.id == DeploymentVersion.deployment_id)
                .where(Deployment.name == name)
                .order_by(DeploymentVersion.version)
            )
            return [int(number) for number in session.scalars(query)]

    def kept_queues(self, name: str) -> list[str]:
        """The queues of the services of ``name``'s kept versions (a renamed service's old
        queue among them: its parked tasks resume from it)."""
        with self._db.read() as session:
            query = (
                select(DeploymentVersion.spec)
                .join(Deployment, Deployment.id == DeploymentVersion.deployment_id)
                .where(Deployment.name == name)
            )
            specs = list(session.scalars(query))
        return sorted(
            {
                service_queue(name, service)
                for spec in specs
                for service in load_deployment_mapping(spec).services
            }
        )
