"""The distributed Celeriac the soak runs: a private broker, a fresh PostgreSQL database, an
API server, the control-plane consumer and service workers, each of which the faults may kill
and start again (under the same name, as a supervisor would)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx
import psycopg
import pytest

from tests.soak.workflow import DEPLOYMENT
from tests.support.processes import READY_TIMEOUT, Process, Processes, free_port
from tests.support.servers import PrivateRabbitMQ, PrivateRedis

#: Settings of every process: short heartbeats and resends, so that recoveries show in minutes.
HEARTBEAT_INTERVAL = 1.0
REDISPATCH_AFTER = 3.0
#: Redis redelivers a message unacknowledged this long: above any run of the soak (a slow task,
#: a question waiting for its answer), so that a redelivery means a lost consumer.
VISIBILITY_TIMEOUT = 60
#: Celery node names end with this host part.
NODE_HOST = "soak"


class SoakError(Exception):
    """The soak cannot go on (a process that does not start, a broker that does not answer)."""


class Broker(Protocol):
    """A broker of the soak's own that it may stop, kill and start."""

    url: str

    def start(self) -> None:
        """Start it and wait until it answers."""

    def stop(self) -> None:
        """Stop it as an operator would (it writes its files)."""

    def kill(self) -> None:
        """SIGKILL it."""


class RedisBroker:
    """A private ``redis-server`` with its append-only file, written before each answer
    (``appendfsync always``), so that a SIGKILL too loses nothing it acknowledged."""

    def __init__(self, processes: Processes, folder: Path) -> None:
        self.redis = PrivateRedis(processes, folder, appendfsync="always")
        self.url = self.redis.url

    def start(self) -> None:
        """Start it and wait until it answers."""
        with readable("redis-server"):
            self.redis.start()

    def stop(self) -> None:
        """SIGTERM: it writes its append-only file and exits."""
        with readable("redis-server"):
            self.redis.stop()

    def kill(self) -> None:
        """SIGKILL."""
        assert self.redis.server is not None
        self.redis.server.kill()


class RabbitBroker:
    """A private RabbitMQ node: durable queues and persistent messages, confirmed to
    publishers once on disk, so that a SIGKILL too loses nothing it confirmed."""

    def __init__(self, processes: Processes, folder: Path) -> None:
        self.rabbit = PrivateRabbitMQ(processes, folder)
        self.url = self.rabbit.url

    def start(self) -> None:
        """Start the node and wait until a client can connect."""
        with readable("rabbitmq-server"):
            self.rabbit.start()

    def stop(self) -> None:
        """SIGTERM: it closes its connections, writes its queues out and exits."""
        with readable("rabbitmq-server"):
            self.rabbit.stop()

    def kill(self) -> None:
        """SIGKILL (the node and everything it started)."""
        assert self.rabbit.server is not None
        self.rabbit.server.kill()


@contextlib.contextmanager
def readable(what: str) -> Iterator[None]:
    """Turn the test helpers' failures and skips (pytest's, outside pytest) into
    :class:`SoakError`."""
    try:
        yield
    except (pytest.fail.Exception, pytest.skip.Exception) as exc:
        raise SoakError(f"{what}: {exc}") from None


def wait_for(probe: Callable[[], bool], timeout: float, what: str) -> None:
    """Call ``probe`` until it holds; raise :class:`SoakError` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise SoakError(f"{what}: not there after {timeout:g} s")
        time.sleep(0.2)


def executable(name: str) -> str:
    """A console script of this interpreter's environment."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise SoakError(f"no {name} next to {sys.executable}: install the project in this venv")
    return str(path)


class Stack:
    """The processes of one distributed Celeriac, started and restarted by name."""

    def __init__(
        self, broker: Broker, database_url: str, folder: Path, processes: Processes
    ) -> None:
        self.broker = broker
        self.database_url = database_url
        self.folder = folder
        self.processes = processes
        self.port = free_port()
        self.workers: list[str] = []
        self.concurrency = 4

    @property
    def server(self) -> str:
        """The API server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    # -- starting ---------------------------------------------------------------------------------

    def env(self, *, database: bool) -> dict[str, str]:
        """The environment of a Celeriac process; service workers get no database URL."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
        env |= {
            "CELERIAC_BROKER_URL": self.broker.url,
            "CELERIAC_PORT": str(self.port),
            "CELERIAC_SERVER": self.server,
            "CELERIAC_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
            "CELERIAC_REDISPATCH_AFTER": str(REDISPATCH_AFTER),
            "CELERIAC_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
            "CELERIAC_DATA_DIR": str(self.folder / "data"),
            "CELERIAC_CONFIG": str(self.folder / "profiles.yml"),
            "CELERIAC_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        if database:
            env["CELERIAC_DATABASE_URL"] = self.database_url
        return env

    def _start(self, name: str, argv: Sequence[str], *, database: bool = True) -> Process:
        return self.processes.start(name, argv, self.env(database=database), cwd=self.folder)

    def start_api(self, deployment_file: Path | None = None) -> Process:
        """Start ``celeriac serve [FILE]`` and wait until it answers."""
        argv = [executable("celeriac"), "serve"]
        if deployment_file is not None:
            argv.append(str(deployment_file))
        process = self._start("api", argv)
        self.wait_for_api(process)
        return process

    def start_control_plane(self) -> Process:
        """Start the control-plane consumer (its readiness: see :meth:`wait_for_heartbeat`)."""
        argv = [executable("celeriac"), "worker", "--control-plane", "-n", node("control-plane")]
        return self._start("control-plane", [*argv, "-l", "WARNING"])

    def start_worker(self, name: str) -> Process:
        """Start the service worker ``name`` of the soak's deployment."""
        argv = [executable("celeriac"), "worker", "-d", DEPLOYMENT, "-c", str(self.concurrency)]
        argv += ["-n", node(name), "-l", "WARNING"]
        return self._start(name, argv, database=False)

    def start_all(self, deployment_file: Path, workers: int, concurrency: int) -> None:
        """The API server (deploying the file), the control-plane consumer and the service
        workers ``w1``... ``wN``, all ready."""
        self.concurrency = concurrency
        self.start_api(deployment_file)
        consumer = self.start_control_plane()
        self.wait_for_heartbeat("control-plane", consumer)
        self.workers = [f"w{i}" for i in range(1, workers + 1)]
        started = [(name, self.start_worker(name)) for name in self.workers]
        for name, process in started:
            self.wait_for_heartbeat(name, process)

    def restart(self, name: str) -> Process:
        """Start the process ``name`` again (its predecessor is dead) and wait until it is
        ready: the API answers, a worker's heartbeat is recorded."""
        if name == "api":
            return self.start_api()
        process = self.start_control_plane() if name == "control-plane" else self.start_worker(name)
        self.wait_for_heartbeat(name, process)
        return process

    # -- looking ----------------------------------------------------------------------------------

    def current(self, name: str) -> Process:
        """The newest process started under ``name``."""
        return next(p for p in reversed(self.processes.started) if p.name == name)

    def pids(self, name: str) -> list[int]:
        """Every process id ever started under ``name``."""
        return [p.pid for p in self.processes.started if p.name == name]

    def wait_for_api(self, process: Process, timeout: float = READY_TIMEOUT) -> None:
        """Poll ``GET /status/`` until it answers 200; fail if the process exits first."""

        def answers() -> bool:
            exited(process)
            try:
                return httpx.get(f"{self.server}/status/", timeout=2.0).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answers, timeout, f"{process.name} answering on {self.server}")

    def wait_for_heartbeat(
        self, name: str, process: Process, timeout: float = READY_TIMEOUT
    ) -> None:
        """Wait until the control plane recorded a heartbeat of this very process."""

        def beating() -> bool:
            exited(process)
            rows = self.query(
                "SELECT pid FROM workers WHERE name = %s AND stopped_at IS NULL", (node(name),)
            )
            return rows == [(process.pid,)]

        wait_for(beating, timeout, f"a heartbeat of {node(name)} (pid {process.pid})")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a query on the soak's database (a connection of its own each time)."""
        url = self.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(url, connect_timeout=5) as conn:
            return list(conn.execute(sql, params).fetchall())


def node(name: str) -> str:
    """The Celery node name of the process called ``name``."""
    return f"{name}@{NODE_HOST}"


def exited(process: Process) -> None:
    """Raise :class:`SoakError`, with the end of its log, if ``process`` is no longer running."""
    if not process.alive():
        tail = "\n".join(process.output().splitlines()[-30:])
        raise SoakError(f"{process.name} exited with {process.popen.returncode}:\n{tail}")
