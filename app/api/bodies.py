"""Reading request bodies that may be hostile: JSON nested too deeply is refused with 422.

Python's JSON decoder recurses once per level of nesting: a body of 100,000 ``[`` ends in a
``RecursionError``, which would answer 500. Every blueprint of the API parses its arguments
with :class:`BoundedParser` (through this module's :class:`Blueprint`), which refuses such a
body, and any nesting deeper than ``CELERIAC_MAX_NESTING``, with the field and the reason.
The size of a body is bounded before it is read (``MAX_CONTENT_LENGTH``, 413).
"""

from __future__ import annotations

import json
from typing import Any

import flask_smorest
from flask import Request
from flask_smorest import abort
from flask_smorest.error_handler import ErrorSchema
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request

from app.api import plane
from config.errors import NestedTooDeeply
from config.limits import load_json


class BoundedParser(FlaskParser):
    """webargs' Flask parser, reading JSON bodies within the server's nesting bound."""

    def _raw_load_json(self, req: Request) -> Any:
        if not is_json_request(req):
            return core.missing
        data = req.get_data(cache=True)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise json.JSONDecodeError(
                f"Bytes decoding error : {exc.reason}", doc=repr(data[:40]), pos=exc.start
            ) from exc
        limit = plane().settings.max_nesting
        try:
            return load_json(text, limit)
        except NestedTooDeeply as exc:
            abort(
                422,
                message="the JSON body is nested too deeply",
                messages={"json": {"_schema": [f"{exc} (CELERIAC_MAX_NESTING)"]}},
            )


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's blueprint, parsing arguments with :class:`BoundedParser`."""

    ARGUMENTS_PARSER = BoundedParser()


def too_large(what: str) -> dict[str, Any]:
    """The arguments of ``Blueprint.alt_response`` that document a 413 for ``what``."""
    return {
        "schema": ErrorSchema,
        "description": f"{what} is over its bound (see the README's knobs), or the body over "
        "the largest the server reads; nothing changed.",
    }
