"""The dashboard's pages: shells that name what they show, filled in by the page's script.

Every page is public and holds no data: its script reads everything through the API, with
the token the person signed in with (kept in the tab's ``sessionStorage``, sent as
``Authorization: Bearer``), so a page tells nothing to someone without a token, and the
API's access table (``app/api/auth.py``) stays the one gate. Pages run no inline script
and load nothing from elsewhere (``Content-Security-Policy``): whatever a task's input,
result or events hold is put in the page as text, never as markup.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, redirect, render_template, url_for

blp = Blueprint(
    "ui",
    __name__,
    url_prefix="/ui",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

#: Where a page may load from and send to: this server only; no inline script or style.
POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)

_HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Task ids in addresses stay on this server.
    "Referrer-Policy": "no-referrer",
}


@blp.after_request
def _protect(response: Response) -> Response:
    """Every answer of the dashboard carries its content policy."""
    response.headers.update(_HEADERS)
    return response


@blp.get("")
def home() -> Any:
    """``/ui`` is ``/ui/``."""
    return redirect(url_for("ui.overview"))


@blp.get("/")
def overview() -> str:
    """Deployments, each with its services, their queues, workers and counts."""
    return render_template("ui/overview.html", page="overview")


@blp.get("/deployments/<string:deployment_name>")
def deployment(deployment_name: str) -> str:
    """A deployment's tasks (filtered, paged, live) and its sessions."""
    return render_template("ui/deployment.html", page="deployment", deployment=deployment_name)


@blp.get("/deployments/<string:deployment_name>/tasks/<string:task_id>")
def task(deployment_name: str, task_id: str) -> str:
    """One task: input, timeline, result or error, runs, live events, answer, cancel, retry."""
    return render_template("ui/task.html", page="task", deployment=deployment_name, task_id=task_id)
