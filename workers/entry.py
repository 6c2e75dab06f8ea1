"""Entry module for service workers started with Celery's own command line.

    CELERIAC_BROKER_URL=redis://... CELERIAC_SERVER=http://api:4501 CELERIAC_TOKEN=clr_... \
        celery -A workers.entry worker -Q celeriac.QuickStart.echo_workflow

A worker started this way learns each deployment from the control plane the first time a
message names it. Entry modules are the one place that reads the environment at import.
Flower runs on this module too (``celery -A workers.entry flower``): in its process, its
Broker page learns to read SQS, and RabbitMQ without the management plugin
(``workers.monitoring``).
"""

from __future__ import annotations

import os

from config.settings import Settings
from workers.catalog import http_fetcher
from workers.celery_app import create_celery
from workers.monitoring import flower_is_running, teach_flower

settings = Settings.from_env(os.environ)
celery = create_celery(settings, fetch=http_fetcher(settings.server, token=settings.token))
if flower_is_running():
    teach_flower(celery)
