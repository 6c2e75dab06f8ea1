"""Defences against web pages: the Host a request names, where it comes from, and CORS.

A browser on the server's host can be made to send requests to it by any page it opens:

- DNS rebinding: a page's own name is made to point at 127.0.0.1, so the browser sends the
  page's requests here with the page's name in ``Host``. An open server (no token needed)
  answers only to loopback names: ``localhost``, ``127.x.y.z`` and ``[::1]``.
- Cross-site requests: a form or a ``fetch`` that needs no preflight (multipart, text/plain)
  reaches the server with the foreign page's ``Origin``, or with ``Sec-Fetch-Site:
  cross-site``. Requests that change something (any method but GET, HEAD and OPTIONS) are
  refused from an origin other than the server's own or one the operator listed in
  ``CELERIAC_CORS_ORIGINS``, whatever the token. Command-line clients send neither header.

CORS is off unless ``CELERIAC_CORS_ORIGINS`` lists origins: those may call the API from a
browser (preflight answered, ``Access-Control-Allow-Origin`` on the answers), with a token in
``Authorization`` (no cookies are used, so no credentials mode).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Response, request

from app.api.auth import caller
from app.errors import Forbidden
from config.settings import Settings, is_loopback

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": "80", "https": "443"}
#: Request headers a listed origin's page may send.
_ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID"
_ALLOWED_METHODS = "GET, HEAD, POST, DELETE"
#: Response headers such a page may read besides the simple ones.
_EXPOSED_HEADERS = "Idempotent-Replayed, Retry-After, WWW-Authenticate"


def host_name(host: str) -> str:
    """The name of a ``Host`` value, without its port (``[::1]:4501`` is ``::1``)."""
    host = host.strip()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def same_origin(origin: str, host: str) -> bool:
    """True when ``origin`` (``scheme://host[:port]``) names this ``Host`` value."""
    parts = urlsplit(origin)
    if parts.scheme not in _DEFAULT_PORTS or not parts.netloc:
        return False  # "null" (sandboxes, files) and anything else odd
    default = _DEFAULT_PORTS[parts.scheme]
    return _with_port(parts.netloc, default) == _with_port(host, default)


def _with_port(netloc: str, default: str) -> str:
    netloc = netloc.strip().lower()
    bracketed = netloc.startswith("[")
    has_port = netloc.rsplit("]", 1)[-1].count(":") == 1 if bracketed else netloc.count(":") == 1
    return netloc if has_port else f"{netloc}:{default}"


class BrowserGuard:
    """The checks of this module, as hooks: ``preflight`` runs before the token check,
    ``check`` after it (it needs to know whether the server is open), ``decorate`` on every
    response."""

    def __init__(self, settings: Settings) -> None:
        self._allowed = frozenset(settings.cors_origin_list)
        self._check_host = not settings.insecure_no_auth

    def preflight(self) -> Response | None:
        """Answer the CORS preflight of a listed origin (browsers send it without a token)."""
        if (
            request.method == "OPTIONS"
            and _origin() in self._allowed
            and "Access-Control-Request-Method" in request.headers
        ):
            response = Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = _ALLOWED_METHODS
            response.headers["Access-Control-Allow-Headers"] = _ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
            return response
        return None

    def check(self) -> None:
        """Refuse a foreign ``Host`` on an open server, and a foreign page's change."""
        host = request.headers.get("Host", "")
        if self._check_host and caller().open and host and not is_loopback(host_name(host)):
            raise Forbidden(
                f"this server has no API token, so it answers requests for loopback names "
                f"only (localhost, 127.0.0.1, [::1]), not {host_name(host)!r}: a web page "
                "could have pointed its own name here (DNS rebinding). Create a token "
                "(celeriac tokens create) to serve other names.",
                errors={"Host": ["not a loopback name"]},
            )
        if request.method in SAFE_METHODS:
            return
        origin = _origin()
        if origin is not None:
            if origin in self._allowed or same_origin(origin, host):
                return
            raise Forbidden(
                f"a request that changes something was sent by a web page of another site "
                f"({origin}); list that origin in CELERIAC_CORS_ORIGINS to allow its pages",
                errors={"Origin": ["not this server's origin, nor a listed one"]},
            )
        if request.headers.get("Sec-Fetch-Site", "").strip().lower() == "cross-site":
            raise Forbidden(
                "a request that changes something was sent by a web page of another site",
                errors={"Sec-Fetch-Site": ["cross-site"]},
            )

    def decorate(self, response: Response) -> Response:
        """Let a listed origin's page read the answer."""
        if not self._allowed:
            return response
        response.vary.add("Origin")
        origin = _origin()
        if origin is not None and origin in self._allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = _EXPOSED_HEADERS
        return response


def _origin() -> str | None:
    """The request's ``Origin``, without a trailing slash, or None."""
    origin = request.headers.get("Origin")
    return None if origin is None else origin.strip().rstrip("/")
