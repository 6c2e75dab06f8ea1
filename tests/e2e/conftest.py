"""Fixtures of the end-to-end tests: real brokers, a fresh PostgreSQL database, real processes.

A test asks for a broker (``redis_url``, ``amqp_url``, ``sqs_url``) and ``make_platform``, then
starts the processes of a distributed Celeriac with the :class:`Platform` it gets. Every process
logs to a file in ``tmp_path``, is killed at teardown, and has its log shown when the test fails.
Brokers and PostgreSQL that cannot be reached skip the test, or fail it under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from kombu import Connection

import migrations
from app.db import Database
from app.models import Deployment, Session, Task
from tests.support.processes import (
    READY_TIMEOUT,
    Process,
    Processes,
    free_port,
    poll,
    require_module,
    unavailable,
)
from tests.support.servers import PrivatePostgres, PrivateRabbitMQ, PrivateRedis

POSTGRES = ("127.0.0.1", 5432)
REDIS = ("127.0.0.1", 6379)
RABBITMQ = ("127.0.0.1", 5672)

#: Seconds between worker heartbeats in every platform these tests start.
HEARTBEAT_INTERVAL = 1.0
#: Seconds after which the control plane sends again a task that no sender published.
REDISPATCH_AFTER = 3.0
#: How long a batch of tasks may take to end; only a failing test waits this long.
TASKS_TIMEOUT = 90.0
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
#: Celery node names end with this host part.
NODE_HOST = "e2e"


def require_service(name: str, host: str, port: int) -> None:
    """Skip the test if ``host:port`` does not answer; under ``CI=true`` fail it instead."""
    try:
        socket.create_connection((host, port), timeout=2.0).close()
    except OSError as exc:
        unavailable(f"{name} is not reachable at {host}:{port} ({exc})")


def script(name: str) -> str:
    """A console script of the running interpreter's environment (or from PATH)."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        unavailable(f"no {name} script next to {sys.executable} nor on PATH")
    return found


# -- processes ------------------------------------------------------------------------------------


#: Test modules of this folder that run one at a time beside the others (see below).
APART = {"test_network_faults.py": "e2e-network"}


def pytest_itemcollected(item: pytest.Item) -> None:
    """Run the tests of this folder one at a time, on one pytest-xdist worker: they measure
    bounds in seconds on a shared machine, and share its brokers and database. The network
    fault tests (each mostly waits out a cut of its own host's link, with brokers of its
    own) run one at a time beside them, on another worker, with the in-process tests.
    (Marked as each is collected: pytest-xdist reads the groups in its own
    ``pytest_collection_modifyitems``.)"""
    if item.path.is_relative_to(Path(__file__).parent):
        item.add_marker(pytest.mark.xdist_group(APART.get(item.path.name, "e2e")))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Show the logs of the test's processes when it fails."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    processes = getattr(item, "funcargs", {}).get("processes")
    if report.failed and isinstance(processes, Processes):
        for title, text in processes.logs():
            report.sections.append((f"log {title}", text))


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Processes of this test; every one is killed at teardown."""
    started = Processes(tmp_path / "logs")
    try:
        yield started
    finally:
        started.kill_all()


# -- PostgreSQL and brokers -----------------------------------------------------------------------


def admin_connection() -> Any:
    """An autocommit connection to the machine's PostgreSQL, as its superuser."""
    psycopg = require_module("psycopg")
    host, port = POSTGRES
    return psycopg.connect(
        host=host, port=port, user="postgres", dbname="postgres", autocommit=True, connect_timeout=5
    )


@contextlib.contextmanager
def fresh_postgres_database(prefix: str = "celeriac_e2e") -> Iterator[str]:
    """A new PostgreSQL database (SQLAlchemy URL), dropped on the way out."""
    require_service("PostgreSQL", *POSTGRES)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin_connection() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@{POSTGRES[0]}:{POSTGRES[1]}/{name}"
    finally:
        with admin_connection() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def seeded_database(
    url: str, task_ids: Sequence[str], session_id: str | None = None
) -> Iterator[Database]:
    """The migrated database at ``url`` holding deployment ``D`` and queued tasks of service
    ``svc`` (in session ``session_id``, if given)."""
    migrations.upgrade(url)
    database = Database(url)
    with database.begin() as session:
        deployment = Deployment(name="D", spec={}, source_yaml="", base_path="")
        session.add(deployment)
        session.flush()
        if session_id is not None:
            session.add(Session(id=session_id, deployment_id=deployment.id))
        session.add_all(
            Task(id=t, deployment_id=deployment.id, session_id=session_id, service="svc", input={})
            for t in task_ids
        )
    try:
        yield database
    finally:
        database.dispose()


@contextlib.contextmanager
def free_redis_database() -> Iterator[str]:
    """A Redis URL on a database number nobody uses now, flushed on the way out."""
    redis = require_module("redis")
    require_service("Redis", *REDIS)
    host, port = REDIS
    numbers = list(range(1, 16))
    random.shuffle(numbers)
    for number in numbers:
        client = redis.Redis(host=host, port=port, db=number, socket_timeout=5)
        if client.dbsize() == 0:
            break
        client.close()
    else:
        pytest.fail("every Redis database 1-15 holds keys: none is free for this test")
    try:
        yield f"redis://{host}:{port}/{number}"
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def private_redis(tmp_path: Path, processes: Processes) -> PrivateRedis:
    """A started Redis server of this test's own (killed with the test's other processes)."""
    require_module("redis")
    server = PrivateRedis(processes, tmp_path / "redis")
    server.start()
    return server


@pytest.fixture
def private_rabbitmq(tmp_path: Path, processes: Processes) -> PrivateRabbitMQ:
    """A started RabbitMQ node of this test's own (killed with the test's other processes)."""
    server = PrivateRabbitMQ(processes, tmp_path / "rabbitmq")
    server.start()
    return server


@pytest.fixture
def managed_rabbitmq(tmp_path: Path, processes: Processes) -> PrivateRabbitMQ:
    """A started RabbitMQ node of this test's own that runs the management plugin (whose HTTP
    API the machine's shared RabbitMQ does not serve)."""
    server = PrivateRabbitMQ(processes, tmp_path / "rabbitmq", management=True)
    server.start()
    return server


@pytest.fixture
def private_postgres(tmp_path: Path, processes: Processes) -> Iterator[PrivatePostgres]:
    """A started PostgreSQL server of this test's own, with an empty ``celeriac`` database;
    stopped and deleted after the test."""
    require_module("psycopg")
    server = PrivatePostgres(processes, tmp_path / "postgres")
    try:
        server.create()
        yield server
    finally:
        server.remove()


@pytest.fixture
def postgres_url(processes: Processes) -> Iterator[str]:
    """A fresh PostgreSQL database (SQLAlchemy URL), dropped after the test."""
    with fresh_postgres_database() as url:
        try:
            yield url
        finally:
            processes.kill_all()


@pytest.fixture
def redis_url(processes: Processes) -> Iterator[str]:
    """A Redis broker URL on a database number nobody uses now, flushed after the test."""
    with free_redis_database() as url:
        try:
            yield url
        finally:
            processes.kill_all()


#: Queues the tests create on RabbitMQ's default virtual host, when they must use it.
_RABBITMQ_QUEUES = ("control_plane", "celeriac.QuickStart.echo_workflow", "celeriac.Sleepy.nap")


def _rabbitmqctl(*args: str) -> bool:
    """Run rabbitmqctl if this host has it and may use it; True if it worked."""
    command = shutil.which("rabbitmqctl")
    if command is None:
        return False
    try:
        done = subprocess.run([command, *args], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _delete_queues(url: str) -> None:
    with Connection(url, connect_timeout=5) as conn:
        channel = conn.channel()
        for queue in _RABBITMQ_QUEUES:
            channel.queue_delete(queue)


@contextlib.contextmanager
def private_vhost() -> Iterator[str]:
    """A RabbitMQ broker URL on a virtual host of its own, deleted on the way out (the default
    virtual host without rabbitmqctl, with the tests' queues deleted before and after)."""
    # Without rabbitmqctl (a laptop with only the AMQP port), the default virtual host is used.
    require_service("RabbitMQ", *RABBITMQ)
    host, port = RABBITMQ
    vhost = f"celeriac-e2e-{uuid.uuid4().hex[:12]}"
    if _rabbitmqctl("add_vhost", vhost):
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        try:
            yield f"amqp://guest:guest@{host}:{port}/{vhost}"
        finally:
            _rabbitmqctl("delete_vhost", vhost)
        return
    url = f"amqp://guest:guest@{host}:{port}//"
    _delete_queues(url)
    try:
        yield url
    finally:
        _delete_queues(url)


@pytest.fixture
def amqp_url(processes: Processes) -> Iterator[str]:
    """A RabbitMQ broker URL on a private virtual host (see :func:`private_vhost`)."""
    with private_vhost() as url:
        try:
            yield url
        finally:
            processes.kill_all()


@pytest.fixture
def sqs_url(processes: Processes) -> str:
    """An SQS broker URL served by a private moto server on a free port."""
    require_module("boto3")
    port = free_port()
    env = dict(os.environ) | {"PYTHONUNBUFFERED": "1"}
    moto = processes.start("moto", [script("moto_server"), "-H", "127.0.0.1", "-p", str(port)], env)

    def answers() -> bool:
        if not moto.alive():
            pytest.fail(f"moto_server exited with {moto.popen.returncode}:\n{moto.output()}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/moto-api/", timeout=2.0).status_code < 500
        except httpx.TransportError:
            return False

    poll(answers, bool, READY_TIMEOUT, "moto_server answering")
    return f"sqs://test:test@127.0.0.1:{port}"


@pytest.fixture(params=["amqp", "redis", "sqs"])
def transport(request: pytest.FixtureRequest) -> str:
    """The kind of broker under test; a test may narrow ``params`` with ``parametrize``."""
    kind: str = request.param
    return kind


@pytest.fixture
def broker_url(transport: str, request: pytest.FixtureRequest) -> str:
    """A private broker of the transport under test (``amqp_url``, ``redis_url``, ``sqs_url``)."""
    url: str = request.getfixturevalue(f"{transport}_url")
    return url


# -- the platform ---------------------------------------------------------------------------------


class Platform:
    """One distributed Celeriac: a broker, a database, an API port, and the processes it runs."""

    def __init__(
        self, broker_url: str, database_url: str, workdir: Path, processes: Processes
    ) -> None:
        self.broker_url = broker_url
        self.database_url = database_url
        self.workdir = workdir
        self.processes = processes
        self.port = free_port()
        self.http = httpx.Client(base_url=self.server, timeout=30.0)
        #: Settings a test gives every process it starts from now on (``CELERIAC_...``).
        self.settings: dict[str, str] = {}

    @property
    def server(self) -> str:
        """The API server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def env(self, *, database: bool = True) -> dict[str, str]:
        """The environment of a Celeriac process; service workers get no database URL."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
        env |= {
            "CELERIAC_BROKER_URL": self.broker_url,
            "CELERIAC_PORT": str(self.port),
            "CELERIAC_SERVER": self.server,
            "CELERIAC_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
            "CELERIAC_REDISPATCH_AFTER": str(REDISPATCH_AFTER),
            "CELERIAC_DATA_DIR": str(self.workdir / "data"),
            "CELERIAC_CONFIG": str(self.workdir / "profiles.yml"),
            "CELERIAC_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            # No AWS credentials or metadata lookups from the host: the URL carries them.
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        env |= self.settings
        if database:
            env["CELERIAC_DATABASE_URL"] = self.database_url
        return env

    def start(self, name: str, argv: Sequence[str], *, database: bool = True) -> Process:
        """Start one process of this platform."""
        return self.processes.start(name, argv, self.env(database=database), cwd=self.workdir)

    # -- the processes -----------------------------------------------------------------------------

    def serve(
        self, deployment_file: Path | None = None, name: str = "api", port: int | None = None
    ) -> Process:
        """Start ``celeriac serve [FILE]`` and wait until it answers; on ``port`` for another
        API server of the platform (the same database and broker), else on the platform's."""
        argv = [script("celeriac"), "serve"]
        if deployment_file is not None:
            argv.append(str(deployment_file))
        env = self.env() | {"CELERIAC_PORT": str(port or self.port)}
        process = self.processes.start(name, argv, env, cwd=self.workdir)
        self.wait_until_ready(process, server=f"http://127.0.0.1:{port or self.port}")
        return process

    def control_plane(self, name: str = "control-plane", *, celery_cli: bool = False) -> Process:
        """Start the control-plane consumer (``celeriac worker --control-plane`` or ``celery``)."""
        node = f"{name}@{NODE_HOST}"
        if celery_cli:
            argv = [script("celery"), "-A", "app.entry", "worker", "-Q", "control_plane"]
            argv += ["-P", "threads", "-c", "4", "-n", node, "-l", "WARNING"]
        else:
            argv = [script("celeriac"), "worker", "--control-plane", "-n", node, "-l", "WARNING"]
        return self.start(name, argv)

    def service_worker(
        self,
        name: str,
        *,
        deployment: str = "QuickStart",
        service: str = "echo_workflow",
        celery_cli: bool = False,
        concurrency: int = 4,
    ) -> Process:
        """Start a service worker (``celeriac worker -d``, or plain ``celery worker -Q``)."""
        # Service workers run user code: they get no database URL.
        node = f"{name}@{NODE_HOST}"
        if celery_cli:
            queue = f"celeriac.{deployment}.{service}"
            argv = [script("celery"), "-A", "workers.entry", "worker", "-Q", queue, "-P", "threads"]
        else:
            argv = [script("celeriac"), "worker", "-d", deployment]
        argv += ["-c", str(concurrency), "-n", node, "-l", "WARNING"]
        return self.start(name, argv, database=False)

    # -- waiting -----------------------------------------------------------------------------------

    def wait_until_ready(
        self, process: Process, timeout: float = READY_TIMEOUT, server: str | None = None
    ) -> None:
        """Poll ``GET /status/`` of ``server`` (the platform's by default) until it answers
        200; fail if the process exits first."""
        server = server or self.server

        def answers() -> bool:
            if not process.alive():
                pytest.fail(
                    f"{process.name} exited with {process.popen.returncode}:\n{process.output()}"
                )
            try:
                # (with the platform's headers: a server with tokens wants one everywhere)
                return self.http.get(f"{server}/status/", timeout=2.0).status_code == 200
            except httpx.TransportError:
                return False

        poll(answers, bool, timeout, f"{process.name} answering on {server}")

    def live_workers(self, deployment: str) -> dict[str, set[str]]:
        """Service id to the names of its live workers, from ``GET /deployments/{d}/services``."""
        response = self.http.get(f"/deployments/{deployment}/services")
        assert response.status_code == 200, response.text
        return {s["name"]: {w["name"] for w in s["workers"]} for s in response.json()}

    def workers_of(self, deployment: str) -> set[str]:
        """Every live worker of any service of ``deployment``."""
        return set().union(*self.live_workers(deployment).values())

    def wait_for_workers(
        self, deployment: str, names: set[str], timeout: float = READY_TIMEOUT
    ) -> set[str]:
        """Wait until every worker in ``names`` is live in the deployment's /services."""
        return poll(
            lambda: self.workers_of(deployment),
            lambda live: names <= live,
            timeout,
            f"workers {sorted(names)} live in /deployments/{deployment}/services",
        )

    def wait_for_consumer(self, node: str, timeout: float = READY_TIMEOUT) -> None:
        """Wait until the control plane recorded a heartbeat of ``node`` (so it is consuming)."""
        poll(
            lambda: self.query(
                "SELECT count(*) FROM workers WHERE name = %s AND stopped_at IS NULL", (node,)
            )[0][0],
            lambda count: count == 1,
            timeout,
            f"a heartbeat of {node} recorded",
        )

    # -- tasks -------------------------------------------------------------------------------------

    def submit(self, deployment: str, inputs: Sequence[dict[str, Any]]) -> list[str]:
        """Queue one task per input with ``tasks/create``, eight at a time; their ids in order."""

        def create(kwargs: dict[str, Any]) -> str:
            response = self.http.post(
                f"/deployments/{deployment}/tasks/create", json={"input": json.dumps(kwargs)}
            )
            assert response.status_code == 200, response.text
            task_id: str = response.json()["task_id"]
            return task_id

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(create, inputs))

    def tasks(self, deployment: str) -> dict[str, dict[str, Any]]:
        """Every task of the deployment, by id."""
        response = self.http.get(f"/deployments/{deployment}/tasks", params={"limit": 1000})
        assert response.status_code == 200, response.text
        return {t["task_id"]: t for t in response.json()}

    def wait_for_tasks(
        self, deployment: str, ids: Sequence[str], timeout: float = TASKS_TIMEOUT
    ) -> dict[str, dict[str, Any]]:
        """Wait until every task in ``ids`` ended; return them by id."""

        def unfinished(tasks: dict[str, dict[str, Any]]) -> list[str]:
            return [i for i in ids if tasks.get(i, {}).get("status") not in TERMINAL]

        tasks = poll(
            lambda: self.tasks(deployment),
            lambda tasks: not unfinished(tasks),
            timeout,
            f"{len(ids)} tasks of {deployment} ended",
        )
        return {i: tasks[i] for i in ids}

    # -- the database ------------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a query on the platform's PostgreSQL database."""
        psycopg = require_module("psycopg")
        url = self.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(url, connect_timeout=5) as conn:
            return list(conn.execute(sql, params).fetchall())

    def workers_by_task(self, ids: Sequence[str]) -> dict[str, int]:
        """How many of these tasks each worker ran, from the ``tasks.worker`` column."""
        rows = self.query(
            "SELECT worker, count(*) FROM tasks WHERE id = ANY(%s) GROUP BY worker", (list(ids),)
        )
        return {worker: count for worker, count in rows}

    def stop_events(self, ids: Sequence[str]) -> dict[str, int]:
        """How many stored ``StopEvent`` events each of these tasks has."""
        rows = self.query(
            "SELECT task_id, count(*) FROM events WHERE type = 'StopEvent' AND task_id = ANY(%s) "
            "GROUP BY task_id",
            (list(ids),),
        )
        return {task_id: count for task_id, count in rows}

    def close(self) -> None:
        """Release the HTTP client."""
        self.http.close()


@pytest.fixture
def make_platform(
    tmp_path: Path, postgres_url: str, processes: Processes
) -> Iterator[Callable[[str], Platform]]:
    """Build the :class:`Platform` of a broker URL, on this test's fresh database."""
    made: list[Platform] = []

    def make(broker_url: str) -> Platform:
        workdir = tmp_path / "platform"
        workdir.mkdir(exist_ok=True)
        platform = Platform(broker_url, postgres_url, workdir, processes)
        made.append(platform)
        return platform

    try:
        yield make
    finally:
        for platform in made:
            platform.close()


def node(name: str) -> str:
    """The Celery node name the platform gives a process called ``name``."""
    return f"{name}@{NODE_HOST}"


SLEEPY_YAML = """\
name: Sleepy

control-plane: {}

default-service: nap

services:
  nap:
    name: Nap
    source:
      type: local
      name: ./src
    path: workflow:sleepy_workflow
"""

SLEEPY_CODE = '''\
"""A workflow that sleeps a little, so that tasks are in flight for a while."""

import asyncio

from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent


class SleepyWorkflow(Workflow):
    """Sleep ``seconds``, then answer with ``n``."""

    @step
    async def nap(self, ev: StartEvent) -> StopEvent:
        """Sleep, then reply."""
        await asyncio.sleep(float(ev.get("seconds", 0.2)))
        return StopEvent(result=f"slept {ev.get('n')}")


sleepy_workflow = SleepyWorkflow(timeout=60)
'''


@pytest.fixture
def sleepy(tmp_path: Path) -> Path:
    """A deployment whose tasks each sleep a little; its YAML file."""
    folder = tmp_path / "sleepy"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "workflow.py").write_text(SLEEPY_CODE)
    path = folder / "deployment.yml"
    path.write_text(SLEEPY_YAML)
    return path


# -- a workflow whose runs are counted apart from Celeriac's records --------------------------


COUNTED_YAML = """\
name: Counted

control-plane: {}

default-service: work

services:
  work:
    name: Work
    source:
      type: local
      name: ./src
    path: workflow:counted_workflow
"""

COUNTED_CODE = '''\
"""A workflow that notes each of its runs in a file, then sleeps a little."""

import asyncio
import os
import time

from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent


class CountedWorkflow(Workflow):
    """Append ``n``, the time and the process id to ``log``; sleep ``seconds``; answer."""

    @step
    async def work(self, ev: StartEvent) -> StopEvent:
        """Note the run, sleep, reply."""
        with open(ev.get("log"), "a") as out:
            out.write(f"{ev.get('n')} {time.time():.3f} {os.getpid()}\\n")
        await asyncio.sleep(float(ev.get("seconds", 0.1)))
        return StopEvent(result=f"done {ev.get('n')}")


counted_workflow = CountedWorkflow(timeout=120)
'''


@pytest.fixture
def counted(tmp_path: Path) -> Path:
    """A deployment whose runs note themselves in a file; its YAML file."""
    folder = tmp_path / "counted"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "workflow.py").write_text(COUNTED_CODE)
    path = folder / "deployment.yml"
    path.write_text(COUNTED_YAML)
    return path
