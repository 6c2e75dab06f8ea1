"""``/deployments/``: create, reload, list, read and delete deployments."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from app.api import plane
from app.api.bodies import Blueprint, too_large
from app.api.schemas import (
    CreateDeploymentArgs,
    DeploymentFileSchema,
    DeploymentSchema,
    DeploymentSpecSchema,
    LiveServiceSchema,
)
from app.errors import InvalidInput

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


@blp.route("/<string:deployment_name>/spec")
class DeploymentSpecItem(MethodView):
    """The full parsed deployment, as service workers load it."""

    @blp.response(200, DeploymentSpecSchema)
    def get(self, deployment_name: str) -> Any:
        """The deployment's parsed spec, version and base path (what workers fetch)."""
        return plane().deployments.get(deployment_name)


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
