"""The benchmark on a real broker: Celeriac's processes and a raw Celery worker, in one run.

For each of ``redis``, ``amqp`` and ``sqs`` (SQS is a ``moto_server`` started for the run):

1. Celeriac: a fresh PostgreSQL database, ``celeriac serve`` of the quick start, the
   control-plane consumer and ``--workers`` service workers (8 threads each), called through
   ``POST /deployments/QuickStart/tasks/run``.
2. Raw Celery on the same broker, with Celery's default transport options (so no publisher
   confirms on RabbitMQ, where Celeriac asks for them) except on SQS, where it polls as often
   as Celeriac does (Kombu's default of 1 s caps it at a dozen tasks per second):
   ``celery -A tests.benchmarks.raw_app worker -P threads -c 8`` and ``apply_async().get()``
   from this process; results over ``rpc://`` on RabbitMQ and in Redis otherwise (SQS has no
   result backend of its own). Two tasks: an echo, the baseline of the speed goal, and the
   quick start's own workflow, which shows what Celeriac costs over running the same workflow
   on Celery by hand.
3. All systems up at once, measured in turns (rounds of sequential calls, then rounds of
   32-client throughput; the order reverses every round), so that the machine's drifting
   speed falls on all alike; with each process's peak RSS and its CPU during the throughput rounds.
4. Clean-up: the queues deleted (RabbitMQ) or the Redis database flushed, moto thrown away,
   every process stopped (SIGTERM, then SIGKILL at a deadline), the database dropped.

Every child runs in a session of its own, so Ctrl-C reaches only this process, which stops
them on the way out (``finally``, and ``atexit`` for anything left).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from tests.benchmarks.bench import (
    ECHO_ANSWER,
    QUICKSTART,
    REPO,
    Figures,
    comparison,
    free_port,
    http_caller,
    measure_latency,
    measure_throughput,
    peak_rss_mb,
    percentile,
)
from tests.benchmarks.raw_app import ECHO, QUEUE, WORKFLOW, create_app
from workers.protocol import CONTROL_QUEUE, service_queue

BIN = Path(sys.executable).parent
CLIENTS = 32
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
#: The local servers, when no ``--redis-url`` or ``--amqp-url`` names others.
REDIS = "redis://127.0.0.1:6379/0"
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
_LIVE: set[subprocess.Popen[bytes]] = set()


@dataclass(frozen=True)
class Broker:
    """One broker as both systems use it."""

    transport: str
    url: str
    #: Raw Celery's result backend, and how the table names it.
    raw_backend: str
    raw_backend_name: str
    #: Raw Celery's transport options (Celery's defaults unless set).
    raw_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Deployed:
    """A deployment Celeriac serves in the benchmark: its folder, name and services."""

    folder: Path
    name: str
    services: tuple[str, ...]

    def queues(self) -> list[str]:
        """The broker queues a run on this deployment uses (the control plane's too)."""
        return [CONTROL_QUEUE, *(service_queue(self.name, s) for s in self.services)]


#: The quick start, which the benchmark runs unless told otherwise.
QUICKSTART_DEPLOYED = Deployed(QUICKSTART, "QuickStart", ("echo_workflow",))


# -- child processes -----------------------------------------------------------------------------


@dataclass
class Child:
    """A process this benchmark started, with its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    log_file: IO[bytes]

    def check_alive(self) -> None:
        """Raise, with the end of its log, if the process has exited."""
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with code {self.proc.returncode}\n{self.tail()}"
            )

    def tail(self, lines: int = 25) -> str:
        """The last lines of its output, indented."""
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(f"    {self.name}| {line}" for line in text)


def spawn(name: str, command: list[str], env: dict[str, str], cwd: Path, logs: Path) -> Child:
    """Start a process in a session of its own, its output going to a log file."""
    log = logs / f"{name.replace(' ', '-')}.log"
    log_file = log.open("wb")
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    _LIVE.add(proc)
    return Child(name, proc, log, log_file)


def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    """Signal the process's whole group (it leads a session of its own)."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)


def stop(children: list[Child], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM every child at once, then SIGKILL whatever still runs at the deadline."""
    for child in children:
        _signal(child.proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"  {child.name} ignored SIGTERM for {timeout:g} s: killed", file=sys.stderr)
            _signal(child.proc, signal.SIGKILL)
            child.proc.wait(5)
        _LIVE.discard(child.proc)
        child.log_file.close()


@atexit.register
def _kill_leftovers() -> None:
    """Last resort: no child outlives this process."""
    for proc in list(_LIVE):
        _signal(proc, signal.SIGKILL)


def wait_until(what: str, ready: Callable[[], bool], children: list[Child]) -> None:
    """Poll ``ready`` until it holds; a child's exit or the deadline raises with their logs."""
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        for child in children:
            child.check_alive()
        if time.monotonic() > deadline:
            tails = "\n".join(child.tail() for child in children)
            raise RuntimeError(f"{what} did not happen within {START_TIMEOUT:g} s\n{tails}")
        time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- brokers and the database --------------------------------------------------------------------


def preflight(transports: list[str], args: argparse.Namespace) -> None:
    """Fail before measuring anything if a server the transports need is down, naming it."""
    redis_url = args.redis_url or REDIS
    amqp_url = args.amqp_url or RABBITMQ
    checks: dict[str, Callable[[], object]] = {}
    if transports:
        checks[f"PostgreSQL at {args.pg_url} (--pg-url)"] = lambda: _pg_connect(args.pg_url).close()
    if {"redis", "sqs"} & set(transports):
        checks[f"Redis at {redis_url} (--redis-url)"] = lambda: _redis(redis_url).ping()
    if "amqp" in transports:
        checks[f"RabbitMQ at {amqp_url} (--amqp-url)"] = lambda: _amqp_ping(amqp_url)
    if "sqs" in transports:
        checks[f"moto_server in {BIN}"] = lambda: (BIN / "moto_server").resolve(strict=True)
    down = []
    for what, check in checks.items():
        try:
            check()
        except Exception as exc:
            down.append(f"  {what} is not reachable: {exc}")
    if down:
        raise RuntimeError("a server the benchmark needs is down:\n" + "\n".join(down))


def _pg_connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)


def _amqp_ping(url: str) -> None:
    from kombu import Connection

    with Connection(url, connect_timeout=5) as conn:
        conn.ensure_connection(max_retries=1)


@contextmanager
def fresh_database(pg_url: str, name: str) -> Iterator[str]:
    """A new PostgreSQL database, dropped after use; yields its SQLAlchemy URL."""
    from psycopg import sql

    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with _pg_connect(pg_url) as conn:
        conn.execute(drop)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = urlsplit(pg_url)
    try:
        yield urlunsplit(("postgresql+psycopg", parts.netloc, f"/{name}", parts.query, ""))
    finally:
        with _pg_connect(pg_url) as conn:
            conn.execute(drop)


@contextmanager
def redis_database(url: str | None) -> Iterator[str]:
    """The Redis database asked for (flushed before and after), or else an empty one of 1-15
    (flushed after): other users of this Redis keep theirs."""
    if url:
        with _redis(url) as client:
            client.flushdb()
    else:
        url = _empty_redis_database()
    try:
        yield url
    finally:
        with _redis(url) as client:
            client.flushdb()


def _empty_redis_database() -> str:
    """The URL of a database of the local Redis that holds no key."""
    for number in range(15, 0, -1):
        url = f"{REDIS.rsplit('/', 1)[0]}/{number}"
        with _redis(url) as client:
            if client.dbsize() == 0:
                return url
    raise RuntimeError(f"every database 1-15 of {REDIS} holds keys: give --redis-url one to flush")


def _rabbitmqctl(*args: str) -> bool:
    """Run ``rabbitmqctl``; False if it is missing or fails."""
    try:
        done = subprocess.run(["rabbitmqctl", *args], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@contextmanager
def rabbitmq(url: str | None, queues: list[str]) -> Iterator[str]:
    """The virtual host asked for, or else a private one (``rabbitmqctl``), or else the default;
    the benchmark's ``queues`` are deleted after, and a private host too."""
    vhost = f"celeriac-bench-{os.getpid()}"
    private = url is None and _rabbitmqctl("add_vhost", vhost)
    if private:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        url = f"{RABBITMQ.rstrip('/')}/{vhost}"
    url = url or RABBITMQ
    try:
        _amqp_queues(url, queues, delete=False)
        yield url
    finally:
        _amqp_queues(url, queues, delete=True)
        if private:
            _rabbitmqctl("delete_vhost", vhost)


def _amqp_queues(url: str, queues: list[str], *, delete: bool) -> None:
    """Before a run, refuse queues another consumer reads and purge leftovers; after, delete."""
    from amqp.exceptions import NotFound
    from kombu import Connection

    with Connection(url, connect_timeout=5) as conn:
        channel = conn.channel()
        for name in queues:
            if delete:
                channel.queue_delete(name)
                continue
            try:
                _, messages, consumers = channel.queue_declare(name, passive=True)
            except NotFound:
                channel = conn.channel()  # a failed passive declare closes the channel
                continue
            if consumers:
                raise RuntimeError(
                    f"queue {name} on {url} already has {consumers} consumer(s): something else "
                    "uses this broker; stop it or give --amqp-url a virtual host of its own"
                )
            if messages:
                print(f"  purging {messages} leftover message(s) from {name}", file=sys.stderr)
                channel.queue_purge(name)


@contextmanager
def moto_server(logs: Path) -> Iterator[str]:
    """A throw-away local SQS; yields its broker URL."""
    port = free_port()
    command = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    child = spawn("moto_server", command, dict(os.environ), logs, logs)
    try:
        wait_until("moto_server listening", lambda: _answers(f"http://127.0.0.1:{port}/"), [child])
        yield f"sqs://test:test@127.0.0.1:{port}"
    finally:
        stop([child])


@contextmanager
def broker_for(
    transport: str,
    args: argparse.Namespace,
    logs: Path,
    deployed: Deployed = QUICKSTART_DEPLOYED,
) -> Iterator[Broker]:
    """The transport's broker, cleaned after the run (``deployed``'s queues and raw Celery's)."""
    if transport == "amqp":
        with rabbitmq(args.amqp_url, [*deployed.queues(), QUEUE]) as url:
            yield Broker("amqp", url, "rpc://", "rpc://")
        return
    with redis_database(args.redis_url) as redis_url:
        if transport == "redis":
            yield Broker("redis", redis_url, redis_url, "Redis")
            return
        with moto_server(logs) as url:
            polling = {"polling_interval": 0.1, "wait_time_seconds": 10}  # as Celeriac's
            yield Broker("sqs", url, redis_url, "Redis; polls SQS every 0.1 s", polling)


def _answers(url: str, ok: Callable[[httpx.Response], bool] = lambda r: True) -> bool:
    """True if an HTTP GET of ``url`` gets an answer that ``ok`` accepts."""
    try:
        return ok(httpx.get(url, timeout=2))
    except httpx.TransportError:
        return False


# -- Celeriac ------------------------------------------------------------------------------------


def _live_workers(url: str, deployed: Deployed, wanted: int) -> Callable[[], bool]:
    """A check: each service of ``deployed`` has at least ``wanted`` live workers."""

    def enough(response: httpx.Response) -> bool:
        if response.status_code != 200:
            return False
        return all(len(s["workers"]) >= wanted for s in response.json())

    return lambda: _answers(f"{url}/deployments/{deployed.name}/services", enough)


@contextmanager
def celeriac_cluster(
    broker: Broker,
    database_url: str,
    workers: int,
    logs: Path,
    deployed: Deployed = QUICKSTART_DEPLOYED,
    settings: dict[str, str] | None = None,
) -> Iterator[tuple[str, list[Child]]]:
    """API server, control-plane consumer and service workers of ``deployed``, with extra
    ``settings`` (``CELERIAC_*`` variables) for all; yields the URL and processes."""
    workdir = Path(tempfile.mkdtemp(prefix="celeriac-bench-"))
    shutil.copytree(deployed.folder, workdir / "deployment")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "CELERIAC_BROKER_URL": broker.url,
        "CELERIAC_DATABASE_URL": database_url,
        "CELERIAC_PORT": str(port),
        "CELERIAC_SERVER": url,
        "CELERIAC_DATA_DIR": str(workdir / ".celeriac"),
        "CELERIAC_LOG_LEVEL": "WARNING",
        **(settings or {}),
    }
    celeriac = str(BIN / "celeriac")
    children: list[Child] = []
    try:
        serve = [celeriac, "serve", "deployment/deployment.yml"]
        children.append(spawn("API server", serve, env, workdir, logs))
        wait_until("celeriac serve answering", lambda: _answers(f"{url}/status/"), children)
        control = [celeriac, "worker", "--control-plane", "-l", "WARNING"]
        children.append(spawn("control plane", control, env, workdir, logs))
        service = [celeriac, "worker", "-d", deployed.name, "-c", "8", "-l", "WARNING"]
        for n in range(1, workers + 1):
            name = "service worker" if workers == 1 else f"service worker {n}"
            children.append(spawn(name, service, env, workdir, logs))
        live = _live_workers(url, deployed, workers)
        wait_until(f"{workers} live service worker(s)", live, children)
        yield url, children
    finally:
        stop(children)
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class System:
    """One of the two systems under test, up and answering, and what it has measured."""

    name: str
    make_call: Callable[[], Callable[[], object]]
    children: list[Child]
    latencies: list[float] = field(default_factory=list)
    tasks: int = 0
    wall: float = 0.0
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    def label(self, transport: str) -> str:
        return f"{transport} {self.name.split(' (')[0]}"


@contextmanager
def celeriac_system(
    args: argparse.Namespace, broker: Broker, database_url: str, logs: Path
) -> Iterator[System]:
    """Celeriac's processes, called through ``tasks/run`` of the quick start."""
    label = f"{broker.transport} Celeriac"
    print(f"{label}: starting the API server, control plane, service worker(s)", file=sys.stderr)
    workers = f"{args.workers} service worker{'s' if args.workers > 1 else ''} x 8 threads"
    system = f"Celeriac (HTTP, PostgreSQL, {workers})"
    with celeriac_cluster(broker, database_url, args.workers, logs) as (url, children):
        yield System(system, http_caller(url), children)


#: Each system's sequential calls, then its throughput tasks, are split into rounds, the two
#: systems taking turns (who goes first alternates): the machine's speed drifts within a run,
#: and taking turns spreads that drift over both systems. Throughput has one round each: a
#: second round of fresh client threads made raw Celery's ``rpc://`` results time out on
#: RabbitMQ (seen once in two runs), and each round needs enough tasks for a steady state.
LATENCY_ROUNDS = 6
THROUGHPUT_ROUNDS = 1


def measure(
    args: argparse.Namespace, broker: Broker, systems: list[System], clients: int = CLIENTS
) -> list[Figures]:
    """Latency, then throughput with ``clients`` clients, of every system, in alternating
    rounds; with the cores each process (and the clients) used during its throughput rounds,
    and each process's peak RSS."""
    for n in range(LATENCY_ROUNDS):
        for system in systems if n % 2 == 0 else systems[::-1]:
            calls = share(args.calls, n, LATENCY_ROUNDS)
            label = f"{system.label(broker.transport)} latency {n + 1}/{LATENCY_ROUNDS}"
            system.latencies += measure_latency(system.make_call(), calls, label)
    for n in range(THROUGHPUT_ROUNDS):
        for system in systems if n % 2 == 0 else systems[::-1]:
            tasks = share(args.tasks, n, THROUGHPUT_ROUNDS)
            pids = {c.name: c.proc.pid for c in system.children} | {"clients": os.getpid()}
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            start = time.perf_counter()
            rounds = f"{n + 1}/{THROUGHPUT_ROUNDS}"
            label = f"{system.label(broker.transport)} {clients} clients {rounds}"
            measure_throughput(system.make_call, clients, tasks, label)
            system.wall += time.perf_counter() - start
            system.tasks += tasks
            for name, pid in pids.items():
                used = cpu_seconds(pid) - before[name]
                system.cpu_seconds[name] = system.cpu_seconds.get(name, 0.0) + used
    return [_figures(broker, system) for system in systems]


def share(total: int, round_number: int, rounds: int) -> int:
    """Round ``round_number``'s part of ``total`` (the parts add up to it)."""
    return total * (round_number + 1) // rounds - total * round_number // rounds


def _figures(broker: Broker, system: System) -> Figures:
    latencies = sorted(system.latencies)
    rss = {c.name: peak_rss_mb(c.proc.pid) or 0.0 for c in system.children}
    return Figures(
        system.name,
        percentile(latencies, 0.5),
        percentile(latencies, 0.95),
        percentile(latencies, 0.99),
        None,
        system.tasks / system.wall,
        max(rss.values(), default=None),
        broker.transport,
        rss,
        {name: used / system.wall for name, used in system.cpu_seconds.items()},
    )


# -- raw Celery ----------------------------------------------------------------------------------


@contextmanager
def raw_worker(broker: Broker, logs: Path) -> Iterator[Child]:
    """``celery worker`` of the raw app, threads pool, 8 threads, on the broker."""
    env = {
        **os.environ,
        "RAW_BENCH_BROKER": broker.url,
        "RAW_BENCH_BACKEND": broker.raw_backend,
        "RAW_BENCH_TRANSPORT_OPTIONS": json.dumps(broker.raw_options),
    }
    command = [str(BIN / "celery"), "-A", "tests.benchmarks.raw_app", "worker"]
    command += f"-P threads -c 8 -Q {QUEUE} -l WARNING -n raw-bench-{os.getpid()}@%h".split()
    child = spawn("raw worker", command, env, REPO, logs)
    try:
        yield child
    finally:
        stop([child])


@contextmanager
def raw_systems(broker: Broker, logs: Path) -> Iterator[list[System]]:
    """A raw Celery worker process, called with ``apply_async().get()`` from this one: its echo
    task (the goal's baseline), then its task that runs the quick start's workflow.

    Each is called through a Celery app of its own: on RabbitMQ, the ``rpc://`` results of a
    second set of 32 client threads on one app timed out (see ``THROUGHPUT_ROUNDS``)."""
    from celery.exceptions import TimeoutError as ResultTimeout

    print(f"{broker.transport} raw Celery: starting the worker", file=sys.stderr)
    apps = {
        name: create_app(broker.url, broker.raw_backend, broker.raw_options)
        for name in (ECHO, WORKFLOW)
    }
    results = f"results: {broker.raw_backend_name}"
    try:
        with raw_worker(broker, logs) as child:
            for name, app in apps.items():
                first = app.tasks[name].apply_async(kwargs={"message": "hello"})
                answered = partial(echo_answered, first, ResultTimeout)
                wait_until(f"the raw Celery worker's first {name}", answered, [child])
            yield [
                System(
                    f"raw Celery (threads x 8; {results})", raw_caller(apps[ECHO], ECHO), [child]
                ),
                System(
                    f"raw Celery + the same workflow (threads x 8; {results})",
                    raw_caller(apps[WORKFLOW], WORKFLOW),
                    [child],
                ),
            ]
    finally:
        for app in apps.values():
            app.close()


def raw_caller(app: Any, name: str) -> Callable[[], Callable[[], object]]:
    """Makes calls of the task ``name`` of ``app`` that check its answer."""
    task = app.tasks[name]

    def make_call() -> Callable[[], object]:
        def call() -> object:
            answer = task.apply_async(kwargs={"message": "hello"}).get(timeout=60, interval=0.001)
            if answer != ECHO_ANSWER:
                raise RuntimeError(f"raw Celery's {name} answered {answer!r}")
            return answer

        return call

    return make_call


def echo_answered(result: Any, timeout_error: type[Exception]) -> bool:
    """True once ``result`` holds the echo's answer (waits up to a second)."""
    with suppress(timeout_error):
        return bool(result.get(timeout=1) == ECHO_ANSWER)
    return False


# -- one transport, and the report --------------------------------------------------------------


def bench_transport(args: argparse.Namespace, transport: str) -> list[Figures]:
    """Celeriac and raw Celery on one broker, both up, measured in turns; the broker and the
    database cleaned after."""
    logs = Path(tempfile.mkdtemp(prefix=f"celeriac-bench-{transport}-logs-"))
    done = False
    database = f"celeriac_bench_{transport}_{os.getpid()}"
    try:
        with (
            broker_for(transport, args, logs) as broker,
            fresh_database(args.pg_url, database) as database_url,
            celeriac_system(args, broker, database_url, logs) as celeriac,
            raw_systems(broker, logs) as raws,
        ):
            figures = measure(args, broker, [celeriac, *raws])
        done = True
    finally:
        if done:
            shutil.rmtree(logs, ignore_errors=True)
        else:
            print(f"\n{transport}: process logs kept in {logs}", file=sys.stderr)
    return figures


def print_table(rows: list[Figures]) -> None:
    """The distributed transports' figures as a Markdown table."""
    print(
        "| transport | system | p50 ms | p99 ms | tasks/s, 32 clients | peak RSS MiB per process |"
    )
    print("|---|---|---:|---:|---:|---|")
    for r in rows:
        rss = ", ".join(f"{name} {mb:.0f}" for name, mb in r.rss_by_process_mb.items())
        print(
            f"| {r.transport} | {r.system} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.tps_32:.0f} |"
            f" {rss or '-'} |"
        )


def comparisons(rows: list[Figures]) -> Iterator[str]:
    """Per transport: the goal, against raw Celery's echo; then Celeriac against raw Celery
    running the same workflow."""
    for celeriac, echo, workflow in zip(rows[::3], rows[1::3], rows[2::3], strict=True):
        yield comparison(celeriac, echo)
        yield (
            f"{celeriac.transport}: against raw Celery running the same workflow, Celeriac's "
            f"p50 latency is {celeriac.p50_ms / workflow.p50_ms:.1f}x and its throughput "
            f"{celeriac.tps_32 / workflow.tps_32:.2f}x"
        )


def print_cpu(rows: list[Figures], clients: int = CLIENTS) -> None:
    """Where the CPU went during each throughput run, in cores (2 is all of this machine)."""
    print(f"\nCPU during the {clients}-client runs, in cores (1.0 = one core busy all the time):")
    for r in rows:
        shares = ", ".join(f"{name} {share:.2f}" for name, share in r.cpu_by_process.items())
        print(f"- {r.transport}, {r.system.split(' (')[0]}: {shares}")
