"""``/healthz`` and ``/readyz``: probes for a supervisor (Kubernetes, a load balancer).

Both are open to anyone, without a token, and neither reads the database before its view
runs (``Need.PROBE`` in ``app/api/auth.py``): a probe must work when the database does not.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flask.views import MethodView
from flask_smorest.error_handler import ErrorSchema

from app.api import plane
from app.api.bodies import Blueprint
from app.api.schemas import AliveSchema, ReadinessSchema
from app.control.readiness import CheckResult
from app.errors import Unavailable

blp = Blueprint("probes", __name__, description="Liveness and readiness probes.")


@blp.route("/healthz")
class Health(MethodView):
    """The process is alive."""

    @blp.response(200, AliveSchema)
    def get(self) -> dict[str, Any]:
        """Answers while the process serves HTTP; touches neither the database nor the
        broker (a liveness probe that restarts a server whose database is down helps no
        one)."""
        return {"status": "ok"}


@blp.route("/readyz")
class Ready(MethodView):
    """The database and the broker answer."""

    @blp.response(200, ReadinessSchema)
    @blp.alt_response(
        503,
        schema=ErrorSchema,
        description="A check failed or did not answer in time: the message names it and "
        "why, and `errors` holds every check by name, as `checks` does when ready.",
    )
    def get(self) -> dict[str, Any]:
        """Checks the database (one round trip) and the broker (a new connection) side by
        side, and answers within about a second even when one of them hangs."""
        results = plane().readiness.check()
        checks = {result.name: _shown(result) for result in results}
        failed = [result for result in results if not result.ok]
        if failed:
            named = "; ".join(f"{result.name}: {result.reason}" for result in failed)
            raise Unavailable(f"not ready: {named}", errors=checks)
        return {"status": "ready", "checks": checks}


def _shown(result: CheckResult) -> dict[str, Any]:
    """A check as the answer shows it (no ``reason`` when it succeeded)."""
    shown = asdict(result)
    del shown["name"]
    shown["seconds"] = round(result.seconds, 4)
    if result.ok:
        del shown["reason"]
    return shown
