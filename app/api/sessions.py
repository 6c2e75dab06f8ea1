"""``/deployments/{d}/sessions``: the task sequences that share a workflow Context."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView

from app.api import plane
from app.api.bodies import Blueprint
from app.api.schemas import RequiredSessionArgs, SessionSchema
from app.models import Session

blp = Blueprint(
    "sessions",
    __name__,
    url_prefix="/deployments/<string:deployment_name>/sessions",
    description="Sessions of a deployment.",
)


def _view(session: Session, task_ids: list[str]) -> dict[str, Any]:
    return {
        "id": session.id,
        "task_ids": task_ids,
        "state": session.state or {},
        "created_at": session.created_at,
    }


@blp.route("")
class SessionList(MethodView):
    """The live sessions of a deployment."""

    @blp.response(200, SessionSchema(many=True))
    def get(self, deployment_name: str) -> Any:
        """List sessions, oldest first."""
        cp = plane()
        return [_view(s, cp.sessions.task_ids(s.id)) for s in cp.sessions.all(deployment_name)]


@blp.route("/create")
class SessionCreate(MethodView):
    """Start a session."""

    @blp.response(200, SessionSchema)
    def post(self, deployment_name: str) -> Any:
        """Create an empty session."""
        return _view(plane().sessions.create(deployment_name), [])


@blp.route("/delete")
class SessionDelete(MethodView):
    """End a session (LlamaDeploy's form, with ``session_id`` in the query)."""

    @blp.arguments(RequiredSessionArgs(), location="query")
    @blp.doc(responses={200: {"description": "null", "content": {"application/json": {}}}})
    def post(self, args: dict[str, Any], deployment_name: str) -> Any:
        """Delete a session; its tasks stay readable."""
        plane().sessions.delete(deployment_name, args["session_id"])
        return current_app.json.response(None)


@blp.route("/<string:session_id>")
class SessionItem(MethodView):
    """One session."""

    @blp.response(200, SessionSchema)
    def get(self, deployment_name: str, session_id: str) -> Any:
        """Read a session with its task ids."""
        cp = plane()
        session = cp.sessions.get(deployment_name, session_id)
        return _view(session, cp.sessions.task_ids(session.id))

    @blp.response(204)
    def delete(self, deployment_name: str, session_id: str) -> None:
        """Delete a session; its tasks stay readable."""
        plane().sessions.delete(deployment_name, session_id)
