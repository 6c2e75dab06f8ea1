"""REST resources (flask-smorest blueprints) and their marshmallow schemas.

Views take their arguments' schemas as instances (``@blp.arguments(RunArgs())``): given a
class, webargs builds an instance on every request. The schemas hold no state.
"""

from __future__ import annotations

from flask import current_app

from app.control.plane import ControlPlane

EXTENSION = "celeriac"


def plane() -> ControlPlane:
    """The control plane of the running application."""
    return current_app.extensions[EXTENSION]
