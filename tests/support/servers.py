"""Brokers and databases of a test's own, on free ports, that the test may stop and start.

Tests that restart or cut off a service use these, never the machine's shared services.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import (
    READY_TIMEOUT,
    Process,
    Processes,
    free_port,
    poll,
    require_module,
    unavailable,
)


class PrivateRedis:
    """A ``redis-server`` of this test's own, on a free port, that the test may stop and start.

    It runs as the README tells operators to run a Redis broker: with the append-only file
    (``appendonly yes``, ``appendfsync everysec``), so that a restart keeps queued and
    unacknowledged messages. Its files live in the test's folder. It listens on ``bind``: this
    machine's loopback address, and others a test's hosts reach it at (``tests.support.hosts``).
    """

    def __init__(
        self, processes: Processes, folder: Path, bind: Sequence[str] = ("127.0.0.1",)
    ) -> None:
        self.processes = processes
        self.folder = folder
        #: The addresses it listens on; the first is the one :attr:`url` names.
        self.bind = tuple(bind)
        self.port = free_port()
        self.server: Process | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """The broker URL (database 0 of this server)."""
        return self.url_at(self.bind[0])

    def url_at(self, address: str) -> str:
        """The broker URL by another of the addresses it listens on."""
        return f"redis://{address}:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers."""
        argv = [self.command(), "--port", str(self.port), "--bind", *self.bind]
        if set(self.bind) - {"127.0.0.1", "::1"}:
            # Redis answers other addresses only with a password or with protected mode off;
            # those a test binds are on links of its own (private /30s to its hosts).
            argv += ["--protected-mode", "no"]
        argv += ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"]
        argv += ["--dir", str(self.folder)]
        self.server = self.processes.start("redis", argv, dict(os.environ), cwd=self.folder)
        server = self.server

        def answers() -> bool:
            if not server.alive():
                pytest.fail(
                    f"redis-server exited with {server.popen.returncode}:\n{server.output()}"
                )
            try:
                socket.create_connection((self.bind[0], self.port), timeout=1.0).close()
            except OSError:
                return False
            return True

        poll(answers, bool, READY_TIMEOUT, f"redis-server answering on port {self.port}")

    def stop(self) -> None:
        """Stop the server as an operator would (SIGTERM: it writes its files, then exits)."""
        assert self.server is not None
        self.server.terminate()

    def client(self) -> Any:
        """A redis-py client of this server."""
        redis = require_module("redis")
        return redis.Redis(host=self.bind[0], port=self.port, socket_timeout=5)

    @staticmethod
    def command() -> str:
        """The ``redis-server`` program, or skip (fail in CI) without it."""
        found = shutil.which("redis-server")
        if found is None:
            unavailable("redis-server is not installed: the broker fault tests start their own")
        return found
