"""``/deployments/``: create, reload, list, read and delete deployments."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from app.api import plane
from app.api.auth import caller, may_see_internals
from app.api.bodies import Blueprint, too_large
from app.api.schemas import (
    CreateDeploymentArgs,
    DeploymentFileSchema,
    DeploymentSchema,
    DeploymentSpecSchema,
    LiveServiceSchema,
    ServiceSummarySchema,
)
from app.errors import InvalidInput
from config.sources import without_credentials

blp = Blueprint("deployments", __name__, url_prefix="/deployments", description="Deployments.")


@blp.route("/")
class DeploymentList(MethodView):
    """All deployments."""

    @blp.response(200, DeploymentSchema(many=True))
    def get(self) -> Any:
        """List deployments."""
        return plane().deployments.all()


@blp.route("/create")
class DeploymentCreate(MethodView):
    """Deploy a YAML file."""

    @blp.arguments(CreateDeploymentArgs(), location="query")
    @blp.arguments(DeploymentFileSchema(), location="files")
    @blp.response(200, DeploymentSchema)
    @blp.alt_response(413, **too_large("The deployment file"))
    def post(self, args: dict[str, Any], files: dict[str, Any]) -> Any:
        """Create (or, with ``reload``, replace) a deployment from a YAML file."""
        content = files["config_file"].read()
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                "the deployment file is not UTF-8 text", errors={"config_file": [str(exc)]}
            ) from exc
        return plane().deployments.create(text, args["base_path"], reload=args["reload"])


@blp.route("/<string:deployment_name>/services")
class DeploymentServices(MethodView):
    """The live service registry of a deployment."""

    @blp.response(200, LiveServiceSchema(many=True))
    def get(self, deployment_name: str) -> Any:
        """Each service with its queue, its live workers and their last heartbeat."""
        return plane().registry.services(deployment_name)


@blp.route("/<string:deployment_name>/summary")
class DeploymentSummary(MethodView):
    """A deployment at a glance."""

    @blp.response(200, ServiceSummarySchema(many=True))
    def get(self, deployment_name: str) -> Any:
        """Each service with its queue, its live workers, its tasks that have not ended by
        status, those that ended in the last hour by status, and how many end per minute."""
        return plane().overview.services(deployment_name)


@blp.route("/<string:deployment_name>/spec")
class DeploymentSpecItem(MethodView):
    """The full parsed deployment, as service workers load it."""

    @blp.response(200, DeploymentSpecSchema)
    def get(self, deployment_name: str) -> Any:
        """The deployment's parsed spec, version and base path (what workers fetch); the
        services' ``env`` values, and the credentials in their git URLs, only for a worker
        token (or on an open server); the base path for a worker or an admin token; the
        earlier versions kept for durable tasks (``kept_versions``)."""
        deployment = plane().deployments.get(deployment_name)
        body = _spec_body(
            deployment.name, deployment.version, deployment.spec, deployment.base_path
        )
        return {**body, "kept_versions": plane().versions.kept(deployment_name)}


@blp.route("/<string:deployment_name>/versions/<int:version>/spec")
class DeploymentVersionSpec(MethodView):
    """One version of a deployment, as service workers load it to resume a durable task."""

    @blp.response(200, DeploymentSpecSchema)
    def get(self, deployment_name: str, version: int) -> Any:
        """A version of the deployment's parsed spec: the current one, or an earlier one kept
        while a durable task that started on it has not ended (404 naming the version once it
        is not kept); secrets shown as by the ``spec`` route."""
        found = plane().versions.get(deployment_name, version)
        return _spec_body(found.name, found.version, found.spec, found.base_path)


def _spec_body(name: str, version: int, spec: dict[str, Any], base_path: str) -> dict[str, Any]:
    """A spec as the caller may see it: ``env`` values and the base path for workers only."""
    secrets = caller().sees_secrets
    return {
        "name": name,
        "version": version,
        "base_path": base_path if secrets or may_see_internals() else None,
        "spec": spec if secrets else _redacted(spec),
        "env_redacted": not secrets,
    }


@blp.route("/<string:deployment_name>")
class DeploymentItem(MethodView):
    """One deployment."""

    @blp.response(200, DeploymentSchema)
    def get(self, deployment_name: str) -> Any:
        """Read a deployment."""
        return plane().deployments.get(deployment_name)

    @blp.response(204)
    def delete(self, deployment_name: str) -> None:
        """Delete a deployment with its sessions, tasks and events."""
        plane().deployments.delete(deployment_name)


#: What a redacted ``env`` value reads.
REDACTED = "<redacted>"


def _redacted(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with each service's ``env`` values replaced (their names stay), and the
    user and password of its source's URL."""
    services = {
        name: {
            **service,
            "env": dict.fromkeys(service.get("env") or {}, REDACTED),
            **_source_without_credentials(service.get("source")),
        }
        for name, service in (spec.get("services") or {}).items()
    }
    return {**spec, "services": services}


def _source_without_credentials(source: Any) -> dict[str, Any]:
    """``{"source": ...}`` with the credentials in its ``name`` or ``location`` (the file's
    two words for it) replaced; empty for a service without a source."""
    if not isinstance(source, dict):
        return {}
    hidden = {
        key: without_credentials(value)
        for key, value in source.items()
        if key in ("name", "location") and isinstance(value, str)
    }
    return {"source": source | hidden}
