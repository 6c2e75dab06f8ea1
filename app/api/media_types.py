"""A body is read as the type its route documents, or refused with 415: never ignored.

webargs reads a JSON body only when it is sent as JSON, and otherwise runs the view with the
schema's defaults: ``tasks/run`` with a ``text/plain`` body ran the workflow with no input. A
body that is not empty must have a media type its operation's ``requestBody`` lists (JSON, or
a multipart form for ``deployments/create``; ``+json`` types count as JSON). An empty body is
taken as no body, whatever its ``Content-Type``: some clients send one on POSTs that carry
nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

from flask import request

from app.errors import UnsupportedMediaType

JSON = "application/json"


class BodyCheck:
    """The 415 check, as a ``before_request`` hook."""

    def __init__(self, bodies: Mapping[str, Mapping[str, frozenset[str]]]) -> None:
        self._bodies = bodies

    def check(self) -> None:
        """Refuse a non-empty body of a type the route does not read."""
        accepted = self._bodies.get(request.endpoint or "", {}).get(request.method)
        if not accepted or not _has_body():
            return
        mimetype = request.mimetype
        if mimetype in accepted or (JSON in accepted and mimetype.endswith("+json")):
            return
        expected = " or ".join(sorted(accepted))
        got = mimetype or "no Content-Type"
        raise UnsupportedMediaType(
            f"this route reads a body of type {expected}, not {got}; nothing was done",
            errors={"Content-Type": [f"expected {expected}"]},
        )


def _has_body() -> bool:
    if request.content_length:
        return True
    return "chunked" in request.headers.get("Transfer-Encoding", "").lower()
