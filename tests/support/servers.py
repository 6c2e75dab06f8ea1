"""Brokers and databases of a test's own, on free ports, that the test may stop and start.

Tests that restart or cut off a service use these, never the machine's shared services.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest
from kombu import Connection
from kombu.exceptions import OperationalError

from tests.support.processes import (
    READY_TIMEOUT,
    STOP_TIMEOUT,
    Process,
    Processes,
    free_port,
    poll,
    require_module,
    unavailable,
)


class PrivateBroker(Protocol):
    """What the broker fault tests need of a private broker."""

    #: Seconds each start took, until a client could connect.
    start_times: list[float]

    @property
    def url(self) -> str:
        """The broker URL."""

    def start(self) -> None:
        """Start the server and wait until it answers."""

    def stop(self) -> None:
        """Stop the server as an operator would, keeping what it stores."""


class PrivateRedis:
    """A ``redis-server`` of this test's own, on a free port, that the test may stop and start.

    It runs as the README tells operators to run a Redis broker: with the append-only file
    (``appendonly yes``, ``appendfsync everysec``), so that a restart keeps queued and
    unacknowledged messages. Its files live in the test's folder. ``appendfsync="always"``
    makes it write each command to disk before it answers, so that even a SIGKILL loses
    nothing it acknowledged. It listens on ``bind``: this machine's loopback address, and
    others a test's hosts reach it at (``tests.support.hosts``).
    """

    def __init__(
        self,
        processes: Processes,
        folder: Path,
        appendfsync: str = "everysec",
        port: int | None = None,
        bind: Sequence[str] = ("127.0.0.1",),
    ) -> None:
        self.processes = processes
        self.folder = folder
        self.appendfsync = appendfsync
        #: The addresses it listens on; the first is the one :attr:`url` names.
        self.bind = tuple(bind)
        self.port = free_port() if port is None else port
        self.server: Process | None = None
        #: Seconds each start took, until the server answered.
        self.start_times: list[float] = []
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
        began = time.monotonic()
        argv = [self.command(), "--port", str(self.port), "--bind", *self.bind]
        if set(self.bind) - {"127.0.0.1", "::1"}:
            # Redis answers other addresses only with a password or with protected mode off;
            # those a test binds are on links of its own (private /30s to its hosts).
            argv += ["--protected-mode", "no"]
        argv += ["--save", "", "--appendonly", "yes", "--appendfsync", self.appendfsync]
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
        self.start_times.append(time.monotonic() - began)

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


#: Where Debian's package keeps RabbitMQ's own scripts: ``/usr/sbin/rabbitmq-server`` there is a
#: wrapper that switches to the ``rabbitmq`` user, who could not write into the test's folder.
_RABBITMQ_SCRIPTS = Path("/usr/lib/rabbitmq/bin")


class PrivateRabbitMQ:
    """A ``rabbitmq-server`` node of this test's own, on free ports, that the test may stop and
    start.

    Everything it keeps lives in the test's folder: its database (durable queues and persistent
    messages, kept across a restart), its logs, its configuration and its Erlang cookie (``HOME``
    is the folder). It listens on ``bind`` (127.0.0.1 unless a test's hosts must reach it, see
    ``tests.support.hosts``), has no plugins unless asked for the management plugin
    (``management=True``: its HTTP API on a free port of 127.0.0.1, :attr:`management_api`;
    the machine's shared RabbitMQ keeps it off), and lets ``guest`` in from this host only, as
    a fresh RabbitMQ does (from anywhere when it listens beyond loopback). Its node name is its
    own, so it shares the machine's ``epmd`` with any other node there.
    """

    def __init__(
        self,
        processes: Processes,
        folder: Path,
        bind: Sequence[str] = ("127.0.0.1",),
        *,
        management: bool = False,
    ) -> None:
        self.processes = processes
        self.folder = folder
        #: The addresses it listens on; the first is the one :attr:`url` names.
        self.bind = tuple(bind)
        self.port = free_port()
        self.dist_port = free_port()
        #: The port of the management plugin's HTTP API, if the node runs it.
        self.management_port = free_port() if management else None
        self.node = f"rabbit-e2e-{os.urandom(4).hex()}@localhost"
        self.server: Process | None = None
        #: Seconds each start took, until a client could connect.
        self.start_times: list[float] = []
        folder.mkdir(parents=True, exist_ok=True)
        listeners = [f"listeners.tcp.{i} = {a}:{self.port}\n" for i, a in enumerate(bind, 1)]
        beyond_loopback = bool(set(self.bind) - {"127.0.0.1", "::1"})
        (folder / "rabbitmq.conf").write_text(
            "".join(listeners)
            + ("loopback_users = none\n" if beyond_loopback else "loopback_users.guest = true\n")
            + "log.console = true\n"
            "log.console.level = info\n"
            "log.file = false\n"
            + (
                f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
                if self.management_port
                else ""
            )
        )
        plugins = "rabbitmq_management" if self.management_port else ""
        (folder / "enabled_plugins").write_text(f"[{plugins}].\n")
        (folder / "rabbitmq-env.conf").write_text("")

    @property
    def url(self) -> str:
        """The broker URL (the default virtual host)."""
        return self.url_at(self.bind[0])

    def url_at(self, address: str) -> str:
        """The broker URL by another of the addresses it listens on."""
        return f"amqp://guest:guest@{address}:{self.port}//"

    @property
    def management_api(self) -> str:
        """The base URL of the management plugin's HTTP API, with ``guest``'s credentials (as
        Flower's ``--broker_api`` takes it)."""
        assert self.management_port is not None, "a node started with management=True"
        return f"http://guest:guest@127.0.0.1:{self.management_port}/api/"

    def env(self) -> dict[str, str]:
        """The environment of this node's server and of ``rabbitmqctl`` calls on it."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RABBITMQ_", "ERL_")) and k != "HOME"
        }
        folder = self.folder
        return env | {
            "HOME": str(folder),  # the Erlang cookie: the node's and rabbitmqctl's
            "RABBITMQ_NODENAME": self.node,
            # These name one listener, which replaces the configuration file's: several
            # addresses are left to the file alone.
            **(
                {"RABBITMQ_NODE_IP_ADDRESS": self.bind[0], "RABBITMQ_NODE_PORT": str(self.port)}
                if len(self.bind) == 1
                else {}
            ),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(folder / "plugins"),
            "RABBITMQ_PID_FILE": str(folder / "rabbitmq.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            # The machine's epmd, if it runs, is on loopback; one started for us stays there.
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def start(self) -> None:
        """Start the node and wait until a client can connect to it."""
        began = time.monotonic()
        self.server = self.processes.start(
            "rabbitmq", [self.command("rabbitmq-server")], self.env(), cwd=self.folder
        )
        server = self.server

        def connects() -> bool:
            if not server.alive():
                pytest.fail(
                    f"rabbitmq-server exited with {server.popen.returncode}:\n{server.output()}"
                )
            try:
                socket.create_connection((self.bind[0], self.port), timeout=1.0).close()
                with Connection(self.url, connect_timeout=2) as conn:
                    conn.connect()
                if self.management_port is not None:
                    # The plugin's listener starts a little after the AMQP one.
                    socket.create_connection(("127.0.0.1", self.management_port), 1.0).close()
            except (OSError, OperationalError):
                return False
            return True

        poll(connects, bool, READY_TIMEOUT, f"rabbitmq-server {self.node} on port {self.port}")
        self.start_times.append(time.monotonic() - began)

    def stop(self) -> None:
        """Stop the node as an operator would (SIGTERM: RabbitMQ closes its connections,
        writes its queues and messages out, then exits)."""
        assert self.server is not None
        self.server.terminate()

    @staticmethod
    def command(name: str) -> str:
        """One of RabbitMQ's scripts, or skip (fail in CI) without it."""
        own = _RABBITMQ_SCRIPTS / name
        if own.is_file():
            return str(own)
        found = shutil.which(name)
        if found is None:
            unavailable(f"{name} is not installed: the RabbitMQ fault tests start their own")
        return found


class PrivatePostgres:
    """A PostgreSQL server of this test's own, on a free port, that the test may stop, start,
    freeze and thaw.

    Its cluster is made with ``initdb`` (trust authentication, TCP on 127.0.0.1 only, no Unix
    socket) and runs as the ``postgres`` user, as PostgreSQL refuses to run as root. That user
    cannot enter pytest's folders (private to root), so the cluster lives in a folder of its
    own under the system's temporary folder, named in ``folder/cluster``, and is removed by
    :meth:`remove`. A stop is a fast shutdown; a start again keeps the data. A frozen server
    (:meth:`freeze`) still accepts TCP connections in the kernel but answers nothing: clients
    hang instead of being refused.
    """

    #: The database the tests use (``postgres`` is left to administration).
    DATABASE = "celeriac"
    #: The system user PostgreSQL runs as.
    USER = "postgres"

    def __init__(self, processes: Processes, folder: Path) -> None:
        self.processes = processes
        self.folder = folder
        self.port = free_port()
        self.server: Process | None = None
        self.cluster: Path | None = None
        self.frozen = False
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the tests' database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.DATABASE}"

    def create(self) -> None:
        """Make the cluster (``initdb``), start it and create the tests' database."""
        owner = self._owner()
        self.cluster = Path(tempfile.mkdtemp(prefix="celeriac-postgres-"))
        os.chown(self.cluster, owner.pw_uid, owner.pw_gid)
        (self.folder / "cluster").write_text(f"{self.cluster}\n")
        argv = [*self._as_owner(), self._program("initdb"), "-D", str(self.cluster / "data")]
        argv += ["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"]
        done = subprocess.run(
            argv, cwd=self.cluster, capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            pytest.fail(f"initdb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        self.start()
        with self.connect("postgres") as conn:
            conn.execute(f'CREATE DATABASE "{self.DATABASE}"')

    def start(self) -> None:
        """Start the server on its cluster and wait until it accepts connections."""
        assert self.cluster is not None, "create() first"
        argv = [*self._as_owner(), self._program("postgres"), "-D", str(self.cluster / "data")]
        argv += ["-p", str(self.port), "-c", "listen_addresses=127.0.0.1"]
        argv += ["-c", "unix_socket_directories=", "-c", "max_connections=300"]
        # Durability against a host crash is not under test: spare the disk of a shared host.
        argv += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        self.server = self.processes.start("postgres", argv, dict(os.environ), cwd=self.cluster)
        server = self.server

        def accepts() -> bool:
            if not server.alive():
                pytest.fail(f"postgres exited with {server.popen.returncode}:\n{server.output()}")
            try:
                self.connect("postgres").close()
            except require_module("psycopg").OperationalError:
                return False
            return True

        poll(accepts, bool, READY_TIMEOUT, f"PostgreSQL accepting connections on {self.port}")

    def stop(self) -> None:
        """Stop the server with a fast shutdown (SIGINT: clients are disconnected)."""
        assert self.server is not None and not self.frozen
        self.server.popen.send_signal(signal.SIGINT)
        try:
            self.server.popen.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"postgres still running {STOP_TIMEOUT:g} s after SIGINT")

    def freeze(self) -> None:
        """Stop the postmaster, then every backend and helper process it started (SIGSTOP;
        each child of the postmaster leads a process group of its own): connections are
        still accepted by the kernel, and then hang."""
        assert self.server is not None and self.server.alive()
        os.kill(self.server.pid, signal.SIGSTOP)
        self.frozen = True
        for child in children(self.server.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGSTOP)

    def thaw(self) -> None:
        """Let a frozen server go on (SIGCONT to the postmaster's children, then to it)."""
        assert self.server is not None
        for child in children(self.server.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGCONT)
        os.kill(self.server.pid, signal.SIGCONT)
        self.frozen = False

    def remove(self) -> None:
        """Stop the server if it runs, and delete its cluster."""
        if self.server is not None and self.server.alive():
            if self.frozen:
                self.thaw()
            self.stop()
        if self.cluster is not None:
            shutil.rmtree(self.cluster, ignore_errors=True)
            self.cluster = None

    def connect(self, database: str | None = None) -> Any:
        """An autocommit psycopg connection to a database of this server."""
        psycopg = require_module("psycopg")
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            dbname=database or self.DATABASE,
            autocommit=True,
            connect_timeout=2,
        )

    def _as_owner(self) -> list[str]:
        owner = self.USER
        return [self._setpriv(), f"--reuid={owner}", f"--regid={owner}", "--clear-groups", "--"]

    @classmethod
    def _owner(cls) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(cls.USER)
        except KeyError:
            unavailable(f"no {cls.USER} user: the database fault tests run PostgreSQL as it")

    @staticmethod
    def _setpriv() -> str:
        found = shutil.which("setpriv")
        if found is None:
            unavailable("setpriv is not installed: it runs the private PostgreSQL as postgres")
        return found

    @staticmethod
    def _program(name: str) -> str:
        """A PostgreSQL server program: on PATH, else the newest in /usr/lib/postgresql."""
        found = shutil.which(name)
        if found is None:
            versions = sorted(
                Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
            )
            found = str(versions[-1]) if versions else None
        if found is None:
            unavailable(f"{name} is not installed: the database fault tests start their own")
        return found


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from ``/proc``)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name, in parentheses, may hold spaces: the parent follows its end.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
