"""What the OpenAPI document says of access and bodies, written from the tables that rule them.

An apispec plugin: each operation gets its ``security`` from :data:`app.api.auth.ROUTES` (none
for the public ones), the 401/403/415 answers it may give, and the media types of its request
body are kept for the 415 check (``app/api/bodies.py``), so that what is documented and what
is enforced cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from apispec import APISpec, BasePlugin

from app.api.auth import LEAST_SCOPES, Need, need_of

BEARER = "bearerAuth"
BASIC = "basicAuth"
_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_RESPONSES = {
    "AUTH_REQUIRED": "No live API token (missing, unknown or revoked: the answer never says "
    "which); with `WWW-Authenticate: Bearer`.",
    "NOT_ALLOWED": "The token's scope does not cover the operation, or a request that changes "
    "something came from another site's web page (`Origin`, `Sec-Fetch-Site`), or an open "
    "server was called by a name that is not a loopback one (`Host`).",
    "BODY_TYPE_REFUSED": "The body is not of a type the operation reads.",
}
_SCHEMES = {
    BEARER: {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token (`celeriac tokens create --scope admin|run|read|worker`). "
        "Needed once the server has a live token, or listens beyond loopback. Scopes: admin "
        "(deployments, and all that run may do), run (tasks, sessions, events, and all that "
        "read may do), read (reads), worker (deployment specs with their `env` values). "
        "Each operation lists the least scope it needs.",
    },
    BASIC: {
        "type": "http",
        "scheme": "basic",
        "description": "The same token as the password (any user name), for clients that can "
        "put credentials only in the server's URL (LlamaDeploy's `llamactl` and `Client`).",
    },
}


class AccessPlugin(BasePlugin):
    """Writes each operation's security and error answers; keeps its body's media types."""

    def __init__(self) -> None:
        #: Endpoint, then method, to the media types its body may have.
        self.bodies: dict[str, dict[str, frozenset[str]]] = {}

    def init_spec(self, spec: APISpec) -> None:
        """Declare the token schemes and the error answers they bring."""
        super().init_spec(spec)
        for name, scheme in _SCHEMES.items():
            spec.components.security_scheme(name, scheme)
        for name, description in _RESPONSES.items():
            spec.components.response(name, {"description": description, "content": _ERROR})

    def operation_helper(
        self, path: str | None = None, operations: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """Fill in each operation of one route."""
        rule = kwargs.get("rule")
        if rule is None or not operations:
            return
        for method, operation in operations.items():
            need = need_of(rule.endpoint, method.upper())
            responses = operation.setdefault("responses", {})
            if need in (Need.PUBLIC, Need.PROBE):
                operation["security"] = []
            else:
                operation["security"] = _security(need)
                responses["401"] = {"$ref": "#/components/responses/AUTH_REQUIRED"}
                responses["403"] = {"$ref": "#/components/responses/NOT_ALLOWED"}
            body = operation.get("requestBody")
            if body:
                types = frozenset(body.get("content", {}))
                self.bodies.setdefault(rule.endpoint, {})[method.upper()] = types
                responses["415"] = {"$ref": "#/components/responses/BODY_TYPE_REFUSED"}


def _security(need: Need | None) -> list[dict[str, list[str]]]:
    """Alternatives, each enough: a least scope that grants ``need``, under either scheme."""
    return [{scheme: [scope.value]} for scope in LEAST_SCOPES[need] for scheme in (BEARER, BASIC)]
