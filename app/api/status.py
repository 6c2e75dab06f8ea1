"""``/`` and ``/status/``: is the server up, and what does it serve."""

from __future__ import annotations

from typing import Any

from flask import url_for
from flask.views import MethodView

from app.api import plane
from app.api.bodies import Blueprint
from app.api.schemas import RootSchema, StatusSchema

blp = Blueprint("status", __name__, description="Server health.")


@blp.route("/")
class Root(MethodView):
    """Entry points of the API."""

    @blp.response(200, RootSchema)
    def get(self) -> dict[str, Any]:
        """Links to the API documentation and the status."""
        return {
            "swagger_docs": url_for("api-docs.openapi_swagger_ui", _external=True),
            "status": url_for("status.Status", _external=True),
        }


@blp.route("/status/")
class Status(MethodView):
    """Server health."""

    @blp.response(200, StatusSchema)
    def get(self) -> dict[str, Any]:
        """Health and the deployments served."""
        cp = plane()
        return {
            "status": "Healthy",
            "status_message": "",
            "max_deployments": cp.settings.max_deployments,
            "deployments": [d.name for d in cp.deployments.all()],
        }
