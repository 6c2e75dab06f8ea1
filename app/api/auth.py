"""Who may call which route: API tokens and their scopes, checked before every request.

The server is *open* while it has no live token and listens on loopback only (or its operator
passed ``--insecure-no-auth``): every request from this host is served, as on a laptop.
Otherwise it is *protected*: every request but the public ones (the API's own description, the
health probes, and the dashboard's pages, which hold no data: their scripts call the API with
a token) carries a live token, as ``Authorization: Bearer <token>``, or as the password of
HTTP Basic (how LlamaDeploy's clients send one: a URL such as ``http://token:<token>@host:4501``).

- no token, or one that is not live (unknown, revoked, garbled): 401, never saying which;
- a live token whose scope does not cover the route: 403.

What each route needs is in one table, :data:`ROUTES`; the OpenAPI document shows the same
table as each operation's ``security`` (``app/api/document.py``), and a test checks that
every route is in it. A route missing from it needs a live token of any scope.
"""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass

from flask import g, request

from app.api import plane
from app.errors import Forbidden, Unauthorized
from app.models import Scope
from config.settings import Settings, is_loopback


class Need(enum.Enum):
    """What a route asks of its caller."""

    PUBLIC = "public"  # nothing: the API's description, the dashboard's page shells
    PROBE = "probe"  # nothing, and no token is even looked at: health probes
    READ = "read"  # any read
    RUN = "run"  # tasks, sessions, events
    ADMIN = "admin"  # deployments: they run code
    SPEC = "spec"  # a deployment's spec: reading it, or fetching it as a worker


#: What each scope may do. ``env`` values in a spec are shown to ``worker`` tokens only.
GRANTS: dict[Scope, frozenset[Need]] = {
    Scope.ADMIN: frozenset({Need.READ, Need.RUN, Need.ADMIN, Need.SPEC}),
    Scope.RUN: frozenset({Need.READ, Need.RUN, Need.SPEC}),
    Scope.READ: frozenset({Need.READ, Need.SPEC}),
    Scope.WORKER: frozenset({Need.SPEC}),
}

#: The least scopes that grant each need; None is a route missing from :data:`ROUTES`.
LEAST_SCOPES: dict[Need | None, tuple[Scope, ...]] = {
    Need.READ: (Scope.READ,),
    Need.RUN: (Scope.RUN,),
    Need.ADMIN: (Scope.ADMIN,),
    Need.SPEC: (Scope.READ, Scope.WORKER),
    None: (Scope.READ, Scope.WORKER),
}

P, R, U, A = Need.PUBLIC, Need.READ, Need.RUN, Need.ADMIN

#: Endpoint, then method (HEAD as GET), to what the caller needs.
ROUTES: dict[str, dict[str, Need]] = {
    # The API's description: public, so that /docs can be opened to enter a token.
    "status.Root": {"GET": P},
    "api-docs.openapi_json": {"GET": P},
    "api-docs.openapi_swagger_ui": {"GET": P},
    "swagger_ui_file": {"GET": P},
    # The dashboard's pages and files: shells without data, which their scripts read
    # through the routes below with the person's token (app/ui/pages.py).
    "ui.home": {"GET": P},
    "ui.overview": {"GET": P},
    "ui.deployment": {"GET": P},
    "ui.task": {"GET": P},
    "ui.static": {"GET": P},
    "status.Status": {"GET": R},
    # Probes: a supervisor sends no token, and they must answer while the database does not.
    "probes.Health": {"GET": Need.PROBE},
    "probes.Ready": {"GET": Need.PROBE},
    # Metrics name deployments and services, as reads do; Prometheus can send a read token.
    "metrics.Metrics": {"GET": R},
    "metrics.StatusMetrics": {"GET": R},
    "deployments.DeploymentList": {"GET": R},
    "deployments.DeploymentCreate": {"POST": A},
    "deployments.DeploymentItem": {"GET": R, "DELETE": A},
    "deployments.DeploymentServices": {"GET": R},
    "deployments.DeploymentSummary": {"GET": R},
    "deployments.DeploymentSpecItem": {"GET": Need.SPEC},
    "deployments.DeploymentVersionSpec": {"GET": Need.SPEC},
    "tasks.TaskRun": {"POST": U},
    "tasks.TaskCreate": {"POST": U},
    "tasks.TaskList": {"GET": R},
    "tasks.TaskItem": {"GET": R},
    "tasks.TaskAttempts": {"GET": R},
    "tasks.TaskTimeline": {"GET": R},
    "tasks.TaskSteps": {"GET": R},
    "tasks.TaskResults": {"GET": R},
    "tasks.TaskRetry": {"POST": U},
    "tasks.TaskCancel": {"POST": U},
    "tasks.TaskEvents": {"GET": R, "POST": U},
    "sessions.SessionList": {"GET": R},
    "sessions.SessionCreate": {"POST": U},
    "sessions.SessionDelete": {"POST": U},
    "sessions.SessionItem": {"GET": R, "DELETE": U},
    "workflow_server.Health": {"GET": R},
    "workflow_server.Workflows": {"GET": R},
    "workflow_server.WorkflowRun": {"POST": U},
    "workflow_server.WorkflowRunNowait": {"POST": U},
    "workflow_server.WorkflowSchema": {"GET": R},
    "workflow_server.WorkflowEvents": {"GET": R},
    "workflow_server.WorkflowRepresentation": {"GET": R},
    "workflow_server.Handlers": {"GET": R},
    "workflow_server.Handler": {"GET": R},
    "workflow_server.HandlerCancel": {"POST": U},
    "workflow_server.HandlerEvents": {"GET": R, "POST": U},
}

_UNAUTHORIZED = (
    "this server needs a live API token: send 'Authorization: Bearer <token>' "
    "(celeriac tokens create makes one on the server's host)"
)


@dataclass(frozen=True)
class Caller:
    """Who sent the request being served."""

    #: The server is open: no token was needed.
    open: bool
    #: The scope of the caller's live token (None on an open server, or a public route).
    scope: Scope | None

    @property
    def is_admin(self) -> bool:
        """May do anything: an admin token, or anyone on an open server."""
        return self.open or self.scope is Scope.ADMIN

    @property
    def sees_secrets(self) -> bool:
        """May read ``env`` values: a worker token, or anyone on an open server."""
        return self.open or self.scope is Scope.WORKER


_NOBODY = Caller(open=False, scope=None)


def caller() -> Caller:
    """The caller of the request being served (nobody, before the check ran)."""
    found: Caller = g.get("celeriac_caller", _NOBODY)
    return found


def may_see_internals() -> bool:
    """Whether the caller may see tracebacks and server paths: only an admin token's holder.
    Everyone else, an open server's callers included, gets errors without them
    (``app.api.internals``); the stored rows and the server's log keep them."""
    return caller().scope is Scope.ADMIN


def need_of(endpoint: str | None, method: str) -> Need | None:
    """What a route asks of its caller; None for a route or method not in :data:`ROUTES`."""
    if method == "HEAD":
        method = "GET"
    return ROUTES.get(endpoint or "", {}).get(method)


def presented_token() -> str | None:
    """The token the request carries (Bearer, or the password of Basic), or None."""
    header = request.headers.get("Authorization", "")
    kind, _, value = header.strip().partition(" ")
    value = value.strip()
    if kind.lower() == "bearer" and value:
        return value
    if kind.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return ""  # a garbled header: a token that is not live
        return decoded.partition(":")[2]
    return "" if header else None


class Authenticator:
    """The token check of every request (``check``, a ``before_request`` hook)."""

    def __init__(self, settings: Settings) -> None:
        # Beyond loopback, a server with no live token refuses everything (it refused to
        # start that way; its last token was revoked since), unless opened on purpose.
        self._open_without_tokens = settings.loopback or settings.insecure_no_auth
        self._insecure = settings.insecure_no_auth

    def check(self) -> None:
        """Note the caller, or refuse the request (401, 403)."""
        need = need_of(request.endpoint, request.method)
        if need is Need.PROBE:
            return  # before the token is looked up: that reads the database
        token = presented_token()
        tokens = plane().tokens
        scope = tokens.verify(token) if token else None
        if scope is None:
            if self._open_without_tokens and self._local_peer() and not tokens.any_live():
                g.celeriac_caller = Caller(open=True, scope=None)
                return
            if need is Need.PUBLIC:
                return
            raise Unauthorized(_UNAUTHORIZED)
        g.celeriac_caller = Caller(open=False, scope=scope)
        if need is None or need is Need.PUBLIC or need in GRANTS[scope]:
            return
        raise Forbidden(
            f"this token's scope ({scope.value}) does not allow {request.method} on this "
            f"route, which needs a token of scope {_scope_for(need)}"
        )

    def _local_peer(self) -> bool:
        """An open server serves this host's own clients only (whatever address a WSGI
        server other than ``celeriac serve`` was bound to), unless opened on purpose."""
        peer = request.remote_addr
        return self._insecure or peer is None or is_loopback(peer)


def _scope_for(need: Need) -> str:
    """The least scopes that grant ``need``, for messages."""
    return (
        " or ".join(s.value for s in LEAST_SCOPES[need])
        + " (admin includes run, which includes read)"
    )
