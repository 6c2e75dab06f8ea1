"""The Flask application factory."""

from __future__ import annotations

import logging
from http import HTTPStatus
from pathlib import Path
from typing import Any

import flask_swagger_ui
from flask import Flask, send_from_directory
from flask_smorest import Api
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException

from app.api import (
    EXTENSION,
    deployments,
    metrics,
    probes,
    sessions,
    status,
    tasks,
    workflow_server,
)
from app.api.auth import Authenticator
from app.api.browsers import BrowserGuard
from app.api.document import AccessPlugin
from app.api.internals import shown
from app.api.media_types import BodyCheck
from app.control.plane import ControlPlane
from app.db import Database, is_outage
from app.errors import RETRY_AFTER, ControlPlaneError, Unavailable
from app.ui import pages
from config.settings import Settings
from workers.celery_app import create_celery

log = logging.getLogger(__name__)

API_TITLE = "Celeriac"
API_VERSION = "1"


def create_app(settings: Settings, plane: ControlPlane | None = None) -> Flask:
    """Build the API application around a control plane (made from ``settings`` if not given)."""
    # No static folder: every route is in the access table of app/api/auth.py.
    app = Flask("celeriac", static_folder=None)
    app.config.update(
        API_TITLE=API_TITLE,
        API_VERSION=API_VERSION,
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        # Swagger UI's files come from the flask-swagger-ui package: the docs work offline.
        OPENAPI_SWAGGER_UI_URL="/docs/static/",
        # Bodies past the largest payload bound are refused (413) before they are read.
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        JSON_SORT_KEYS=False,
    )
    if plane is None:
        plane = ControlPlane(settings, Database.for_settings(settings), create_celery(settings))
    app.extensions[EXTENSION] = plane
    access = AccessPlugin()
    api = Api(app, spec_kwargs={"extra_plugins": [access]})
    _serve_swagger_ui_files(app)
    for module in (status, probes, metrics, deployments, tasks, sessions, workflow_server):
        api.register_blueprint(module.blp)
    metrics.Instruments(plane.census).install(app)
    # The dashboard: HTML pages over the API above, outside its OpenAPI document.
    app.register_blueprint(pages.blp)
    _guard_requests(app, settings, access)
    _register_error_handlers(app)
    return app


def _guard_requests(app: Flask, settings: Settings, access: AccessPlugin) -> None:
    """The checks before every view, in this order: a listed origin's CORS preflight (sent
    without a token), the token, a foreign Host or web page, the body's media type."""
    browsers = BrowserGuard(settings)
    app.before_request(browsers.preflight)
    app.before_request(Authenticator(settings).check)
    app.before_request(browsers.check)
    app.before_request(BodyCheck(access.bodies).check)
    app.after_request(browsers.decorate)


def _serve_swagger_ui_files(app: Flask) -> None:
    """Serve Swagger UI's JavaScript and CSS from the installed package, not a CDN."""
    folder = Path(flask_swagger_ui.__file__).parent / "dist"

    @app.get("/docs/static/<path:filename>")
    def swagger_ui_file(filename: str) -> Any:
        return send_from_directory(folder, filename, max_age=3600)


def _register_error_handlers(app: Flask) -> None:
    """Every error leaves in one JSON shape: ``{code, status, message, errors}``."""

    @app.errorhandler(ControlPlaneError)
    def control_plane_error(exc: ControlPlaneError) -> Any:
        retry_after = exc.retry_after if isinstance(exc, Unavailable) else RETRY_AFTER
        response, status = _payload(app, exc.status_code, exc.message, exc.errors, retry_after)
        response.headers.update(exc.headers)
        return response, status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        # Replaces flask-smorest's handler, whose bodies lack ``message`` for argument errors.
        return _http_error(app, exc)

    @app.errorhandler(DBAPIError)
    def database_error(exc: DBAPIError) -> Any:
        # A lost connection (the database restarted: pooled connections are not pinged
        # before use) or an outage: the pool starts afresh, and the client may try again.
        if is_outage(exc):
            log.warning("database unavailable: %s", exc.orig)
            return _payload(app, 503, "the database is unavailable; try again in a moment", {})
        return unexpected(exc)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Any:
        if isinstance(exc, HTTPException):
            return _http_error(app, exc)
        log.exception("unhandled error")
        return _payload(app, 500, "internal error; see the server log", {})


def _http_error(app: Flask, exc: HTTPException) -> Any:
    """Werkzeug's and webargs' errors (404 routes, 405, 422 arguments) in our one shape."""
    code = exc.code or 500
    data = getattr(exc, "data", None) or {}
    errors = data.get("messages") or data.get("errors") or {}
    if code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE and not data:
        limit = app.config["MAX_CONTENT_LENGTH"]
        message = f"the request body is larger than the {limit:,} bytes this server reads"
    elif "message" in data:
        message = str(data["message"])
    elif errors:
        fields = ", ".join(_field_names(errors))
        message = f"invalid request: {fields}" if fields else "invalid request"
    else:
        message = exc.description or HTTPStatus(code).phrase
    response, status = _payload(app, code, message, errors)
    # Werkzeug's own headers of the error (a 405's ``Allow``), then webargs'.
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    for name, value in (data.get("headers") or {}).items():
        response.headers[name] = value
    return response, status


def _field_names(errors: dict[str, Any]) -> list[str]:
    """The fields named by webargs' errors (which nest them under the request location)."""
    names: list[str] = []
    for value in errors.values():
        names.extend(value if isinstance(value, dict) else [])
    return names


def _payload(
    app: Flask, code: int, message: str, errors: dict[str, Any], retry_after: int = RETRY_AFTER
) -> Any:
    """The one error shape; a 503 always says when to try again (``Retry-After``)."""
    body = {"code": code, "status": HTTPStatus(code).phrase, "message": shown(message)}
    if errors:
        body["errors"] = shown(errors)
    response = app.json.response(body)
    if code == HTTPStatus.SERVICE_UNAVAILABLE:
        response.headers["Retry-After"] = str(retry_after)
    return response, code
