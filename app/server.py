"""Run the API server (and, in the embedded mode, every worker) in this process."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import waitress
from flask import Flask

import migrations
from app.control.notifications import Listener
from app.control.plane import ControlPlane
from app.db import Database
from app.embedded import EmbeddedWorkers
from app.errors import NotFound
from app.factory import create_app
from app.models.base import utcnow
from config.datadir import private_folder
from config.deployment import load_deployment
from config.errors import ConfigError
from config.settings import Settings
from workers.celery_app import create_celery

log = logging.getLogger(__name__)


class Server:
    """The API server of one process, with its in-process workers when the broker is embedded."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        private_folder(settings.data_dir)
        migrations.upgrade(settings.sqlalchemy_url)
        celery = create_celery(settings, worker_name="embedded")
        self.plane = ControlPlane(settings, Database.for_settings(settings), celery)
        self._check_exposure()
        self.app: Flask = create_app(settings, self.plane)
        self.workers = EmbeddedWorkers(self.plane) if settings.embedded else None
        # Outcomes are recorded in another process: hear of them from PostgreSQL at once.
        self.listener = None
        if not settings.embedded and self.plane.db.engine.dialect.name == "postgresql":
            self.listener = Listener(settings.sqlalchemy_url, self.plane.waiter)
            self.listener.start()

    def _check_exposure(self) -> None:
        """Refuse to serve beyond loopback with no API token, unless the operator opted out."""
        settings = self.settings
        if settings.loopback or self.plane.tokens.any_live():
            return
        if not settings.insecure_no_auth:
            self.plane.close()
            raise ConfigError(
                f"refusing to listen on {settings.host} without an API token: anyone who "
                "reaches the port could deploy and run code as this user. Create a token "
                "first (celeriac tokens create --scope admin), or pass --insecure-no-auth "
                "(CELERIAC_INSECURE_NO_AUTH=1) to serve with no authentication"
            )
        log.warning(
            "INSECURE: serving the API on %s with no authentication (--insecure-no-auth): "
            "anyone who reaches this port can deploy and run code as this user",
            settings.host,
        )

    def start_workers(self) -> None:
        """Start the in-process workers (embedded mode only), after queueing again the tasks
        that an earlier run of this server left unfinished: its broker's messages died with
        it."""
        if self.workers is None:
            return
        outbox = self.plane.outbox
        if lost := outbox.requeue_lost():
            log.warning("%d unfinished task(s) of an earlier run are queued again", lost)
            outbox.sweep(cutoff=utcnow())
        self.workers.start()

    def deploy(self, path: Path) -> None:
        """Deploy a file at start-up, replacing the stored version of the same name."""
        content = path.read_text()
        base = str(path.resolve().parent)
        name = load_deployment(content).name
        try:
            self.plane.deployments.get(name)
            exists = True
        except NotFound:
            exists = False
        self.plane.deployments.create(content, base, reload=exists)

    def http_server(self) -> Any:
        """A waitress server for the app, bound (port 0 picks a free port) but not yet serving."""
        return waitress.create_server(
            self.app,
            host=self.settings.host,
            port=self.settings.port,
            threads=self.settings.http_threads,
            ident="celeriac",
            # Keep reading a connection while its request runs, so that a client that
            # disconnects is noticed (``waitress.client_disconnected``): tasks/run stops
            # waiting for it, and frees the thread.
            channel_request_lookahead=1,
        )

    def serve(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Serve HTTP until interrupted (Ctrl-C, or SIGTERM in the main thread), then stop."""
        server = self.http_server()
        if threading.current_thread() is threading.main_thread():
            _exit_on_sigterm()
        # The first broker connection loads its client library (boto3 for SQS takes about a
        # second): done now, the first readiness probe answers as the next ones will.
        self.plane.readiness.warm()
        if on_ready:
            on_ready(f"http://{self.settings.host}:{server.effective_port}")
        try:
            server.run()
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            server.close()
            self.close()

    def close(self) -> None:
        """Stop workers and release connections."""
        if self.workers is not None:
            self.workers.stop()
        if self.listener is not None:
            self.listener.stop()
        self.plane.close()


def _exit_on_sigterm() -> None:
    """Treat SIGTERM like Ctrl-C so workers finish their tasks in hand."""

    def handler(_signum: int, _frame: Any) -> None:
        raise SystemExit(0)

    if sys.platform != "win32":
        signal.signal(signal.SIGTERM, handler)
