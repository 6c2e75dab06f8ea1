"""Entry module for service workers started with Celery's own command line.

    CELERIAC_BROKER_URL=redis://... CELERIAC_SERVER=http://api:4501 CELERIAC_TOKEN=clr_... \
        celery -A workers.entry worker -Q celeriac.QuickStart.echo_workflow

A worker started this way learns each deployment from the control plane the first time a
message names it. Entry modules are the one place that reads the environment at import.
"""

from __future__ import annotations

import os

from config.settings import Settings
from workers.catalog import http_fetcher
from workers.celery_app import create_celery

settings = Settings.from_env(os.environ)
celery = create_celery(settings, fetch=http_fetcher(settings.server, token=settings.token))
