"""Deployments: validate a YAML file, store it, and tell whoever runs services."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import selectinload

from app.control.versions import keep_replaced
from app.db import Database
from app.errors import Conflict, InvalidInput, NotFound, TooLarge
from app.models import Deployment, Service
from app.models.base import utcnow
from config.deployment import (
    DeploymentSpec,
    SourceLayout,
    SourceType,
    YamlLimits,
    load_deployment,
    load_deployment_mapping,
)
from config.errors import DeploymentSpecError, SourceFileNotFound, SourceNotAllowed
from config.platform import platform_mismatches
from config.settings import Settings
from config.sources import SourcePolicy, without_credentials
from workers.protocol import service_queue

log = logging.getLogger(__name__)

#: Called after a deployment was stored (spec, base path, version) or deleted (name).
DeployedHook = Callable[[DeploymentSpec, Path, int], None]
RemovedHook = Callable[[str], None]
#: Answers whether every caller is the server's own user (``app.trust.open_mode``).
OpenMode = Callable[[], bool]


class Deployments:
    """Create, reload, read and delete deployments."""

    def __init__(self, db: Database, settings: Settings, open_mode: OpenMode) -> None:
        self._db = db
        self._settings = settings
        self._open_mode = open_mode
        self._limits = YamlLimits(
            settings.max_yaml_bytes, settings.max_yaml_nodes, settings.max_nesting
        )
        self._max = settings.max_deployments
        self._broker = settings.broker_url
        self._database = settings.sqlalchemy_url
        self.on_deployed: list[DeployedHook] = []
        self.on_removed: list[RemovedHook] = []
        #: Called with a deployment's id before it is deleted (its unfinished tasks are
        #: cancelled, so that none of their steps runs later, under a deployment of the same
        #: name made again).
        self.before_delete: list[Callable[[int], None]] = []

    def create(self, config: bytes | str, base_path: str, *, reload: bool = False) -> Deployment:
        """Validate ``config`` and store it; with ``reload`` replace an existing deployment."""
        size = len(config.encode() if isinstance(config, str) else config)
        if size > self._limits.max_bytes:
            raise TooLarge(
                "the deployment file is too large",
                errors={
                    "config_file": [
                        f"{size:,} bytes; at most {self._limits.max_bytes:,} "
                        "(CELERIAC_MAX_YAML_BYTES)"
                    ]
                },
            )
        try:
            spec = load_deployment(config, self._limits)
        except DeploymentSpecError as exc:
            raise InvalidInput("the deployment file is not valid", errors=exc.errors) from exc
        mismatches = platform_mismatches(spec, self._broker, self._database)
        if mismatches:
            raise InvalidInput(
                "the deployment names a broker or database this Celeriac does not use",
                errors=mismatches,
            )
        base = Path(base_path or ".").expanduser().resolve()
        check_sources(spec, base, self.source_policy())
        with self._db.begin() as session:
            query = select(Deployment).where(Deployment.name == spec.name)
            row = session.scalar(query.options(selectinload(Deployment.services)))
            if row is not None and not reload:
                raise Conflict(
                    f"deployment {spec.name!r} already exists; "
                    "deploy with reload=true to replace it"
                )
            if row is None and reload:
                raise NotFound(f"deployment {spec.name!r} does not exist, so it cannot be reloaded")
            if row is None:
                count = session.scalar(select(func.count()).select_from(Deployment)) or 0
                if count >= self._max:
                    raise Conflict(f"the limit of {self._max} deployments is reached")
                row = Deployment(name=spec.name)
                session.add(row)
            else:
                keep_replaced(session, row)
                row.version += 1
                row.updated_at = utcnow()
            row.spec = spec.to_dict()
            row.source_yaml = config.decode() if isinstance(config, bytes) else config
            row.base_path = str(base)
            _sync_services(row, spec)
        for warning in spec.warnings:
            log.warning("deployment %s: %s", spec.name, warning)
        for hook in self.on_deployed:
            hook(spec, base, row.version)
        return row

    def source_policy(self) -> SourcePolicy:
        """Where sources may come from, as of now (a token created meanwhile ends the open
        mode)."""
        return SourcePolicy.from_settings(self._settings, open_mode=self._open_mode())

    def all(self) -> list[Deployment]:
        """Every deployment, by name."""
        with self._db.read() as session:
            query = select(Deployment).options(selectinload(Deployment.services))
            return list(session.scalars(query.order_by(Deployment.name)))

    def get(self, name: str) -> Deployment:
        """One deployment, or :class:`NotFound`."""
        with self._db.read() as session:
            return find(session, name, with_services=True)

    def delete(self, name: str) -> None:
        """Delete a deployment with its sessions, tasks and events; its unfinished tasks are
        cancelled first."""
        with self._db.read() as session:
            deployment_id = find(session, name).id
        for before in self.before_delete:
            before(deployment_id)
        with self._db.begin() as session:
            session.delete(find(session, name))
        for hook in self.on_removed:
            hook(name)

    def specs(self) -> list[tuple[DeploymentSpec, Path, int]]:
        """Every stored deployment's spec, base path and version (to start serving them)."""
        return [(load_deployment_mapping(d.spec), Path(d.base_path), d.version) for d in self.all()]


def find(session: DbSession, name: str, *, with_services: bool = False) -> Deployment:
    """The deployment called ``name`` in this session, or :class:`NotFound`."""
    query = select(Deployment).where(Deployment.name == name)
    if with_services:
        query = query.options(selectinload(Deployment.services))
    row = session.scalar(query)
    if row is None:
        raise NotFound(f"deployment {name!r} not found")
    return row


def check_sources(spec: DeploymentSpec, base: Path, policy: SourcePolicy) -> None:
    """Refuse a deployment with a service that has no source, a source that ``policy``
    does not allow, or local folders, workflow modules or env files that are missing."""
    errors: dict[str, list[str]] = {}
    for service in spec.services.values():
        source = service.source
        prefix = f"services.{service.id}"
        if source is None:
            # LlamaDeploy deployed it, and every task then failed; say it now.
            errors[f"{prefix}.source"] = [
                "Missing data for required field: a service loads its workflow from a source "
                "(type: local and a folder, or type: git and a clone URL)."
            ]
            continue
        if source.type == SourceType.GIT:
            try:
                policy.check_git(source.git_url)
            except SourceNotAllowed as exc:
                errors[f"{prefix}.source.name"] = [
                    f"{without_credentials(source.location)!r}: {exc}"
                ]
            continue
        if source.type != SourceType.LOCAL:
            continue
        layout = SourceLayout.local(base, source.location)
        try:
            policy.check_folder(layout.root)
        except SourceNotAllowed as exc:
            errors[f"{prefix}.source.name"] = [
                f"folder {source.location!r} under the base path {base}: {exc}"
            ]
            continue
        if not layout.root.is_dir():
            errors[f"{prefix}.source.name"] = [
                f"folder {source.location!r} not found under the base path {base}"
            ]
            continue
        try:
            layout.module_folder(service.module_dir, service.module)
        except SourceFileNotFound as exc:
            errors[f"{prefix}.path"] = [_not_found(exc, base)]
        for name in service.env_files:
            try:
                layout.env_file(name)
            except SourceFileNotFound as exc:
                errors.setdefault(f"{prefix}.env-files", []).append(_not_found(exc, base))
    if errors:
        raise InvalidInput("the deployment's sources are missing or not allowed", errors=errors)


def _not_found(exc: SourceFileNotFound, base: Path) -> str:
    """Say where a file was looked for, relative to the base path the caller gave."""
    places = [str(p.relative_to(base)) if p.is_relative_to(base) else str(p) for p in exc.tried]
    return f"{exc.what} not found under the base path; looked in {', '.join(places)}"


def _sync_services(row: Deployment, spec: DeploymentSpec) -> None:
    """Make the service rows match the spec (keeping rows of services that stay)."""
    existing = {s.name: s for s in row.services}
    for sid, service in spec.services.items():
        found = existing.pop(sid, None)
        if found is None:
            found = Service(name=sid)
            row.services.append(found)
        found.display_name = service.name
        found.queue = service_queue(spec.name, sid)
    for gone in existing.values():
        row.services.remove(gone)
