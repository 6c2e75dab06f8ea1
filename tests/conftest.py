"""Shared fixtures: an embedded control plane with real in-process Celery workers on memory://."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from kombu.transport import memory
from waitress import wasyncore

from app.server import Server
from config.settings import Settings

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "config" / "deployments"
QUICKSTART = EXAMPLES / "quickstart" / "deployment.yml"
MULTISTEP = EXAMPLES / "multistep" / "deployment.yml"
HITL = EXAMPLES / "hitl" / "deployment.yml"


def in_ci() -> bool:
    """Under CI=true a missing service fails a test instead of skipping it."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def embedded_settings(tmp_path: Path, **changes: Any) -> Settings:
    """Embedded settings in a private data folder under ``tmp_path``, with ``changes``."""
    return Settings(
        **{
            "data_dir": tmp_path / ".celeriac",
            "port": 0,
            "polling_interval": 0.001,
            "worker_concurrency": 4,
            "run_timeout": 30.0,
            **changes,
        }
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded settings in a private data folder."""
    return embedded_settings(tmp_path)


@pytest.fixture
def server(settings: Settings) -> Iterator[Server]:
    """A control plane with its control-plane and service workers running in this process."""
    srv = Server(settings)
    srv.start_workers()
    try:
        yield srv
    finally:
        srv.close()
        # The memory broker is process-wide: drop what this test left behind.
        memory.Channel.queues.clear()


@pytest.fixture
def client(server: Server) -> FlaskClient:
    """An HTTP client of the server's Flask application."""
    return server.app.test_client()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A scratch folder holding copies of the example deployments, free to edit."""
    dest = tmp_path / "project"
    shutil.copytree(EXAMPLES, dest)
    return dest


def deploy(client: FlaskClient, path: Path, *, reload: bool = False, base_path: Path | None = None):
    """POST a deployment file the way LlamaDeploy clients do (multipart ``config_file``)."""
    with path.open("rb") as fh:
        return client.post(
            "/deployments/create",
            query_string={
                "base_path": str(base_path or path.parent),
                "reload": "true" if reload else "false",
            },
            data={"config_file": (fh, path.name)},
            content_type="multipart/form-data",
        )


@pytest.fixture
def live_server(server: Server) -> Iterator[str]:
    """The server listening on a free local port, over real HTTP; yields its base URL."""
    http = server.http_server()
    thread = threading.Thread(target=http.run, name="test-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{http.effective_port}"
    finally:
        # Close waitress's sockets from inside its own loop: closing them from this thread
        # while its select() waits on them fails with EBADF now and then.
        with contextlib.suppress(OSError):
            # The loop may already have run close_all (woken by a worker thread) and closed
            # the trigger's pipe: then there is nothing left to close.
            http.trigger.pull_trigger(lambda: wasyncore.close_all(http._map))
        thread.join(timeout=5)
        http.task_dispatcher.shutdown()
        assert not thread.is_alive(), "the test HTTP server did not stop"
