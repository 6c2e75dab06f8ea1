"""Entry module for the control-plane consumer started with Celery's own command line.

    CELERIAC_BROKER_URL=redis://... CELERIAC_DATABASE_URL=postgresql+psycopg://... \
        celery -A app.entry worker -Q control_plane

It records what service workers report. Entry modules are the one place that reads the
environment at import.
"""

from __future__ import annotations

import os

from app.control.plane import ControlPlane
from app.db import Database
from config.settings import Settings
from workers.celery_app import create_celery

settings = Settings.from_env(os.environ)
plane = ControlPlane(settings, Database.for_settings(settings), create_celery(settings))
celery = plane.celery
