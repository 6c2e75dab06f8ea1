"""Benchmark: Celeriac's ``tasks/run`` against raw Celery ``apply_async().get()``, same broker.

Run from the repository root (after the README's install):

    python -m tests.benchmarks.bench                    # the embedded mode (memory://)
    python -m tests.benchmarks.bench --quick            # fewer calls, for a smoke run
    python -m tests.benchmarks.bench --transport redis  # or amqp, sqs; ``all`` runs every one

Celeriac is measured as a user meets it: ``celeriac serve`` of the quick-start deployment in
its own process, called over HTTP with keep-alive clients. In the embedded mode raw Celery is
measured in this process with an in-process worker (the memory broker exists only inside one
process) and the same echo workload, in the same run. The distributed transports (Redis,
RabbitMQ, SQS on a local moto server) start Celeriac's three processes and a raw Celery worker
as subprocesses: see ``tests/benchmarks/distributed.py``. Prints one table for the embedded
mode and one for the distributed transports; ``--json FILE`` also saves the figures.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "config" / "deployments" / "quickstart"
TRANSPORTS = ("memory", "redis", "amqp", "sqs")
#: What Celeriac must reach against raw Celery: at most this latency ratio, at least this
#: throughput ratio.
GOAL_LATENCY, GOAL_THROUGHPUT = 3.0, 1 / 3
ECHO_ANSWER = "Message received: hello"


@dataclass
class Figures:
    """What one system measured."""

    system: str
    p50_ms: float
    p95_ms: float
    p99_ms: float
    tps_8: float | None
    tps_32: float
    peak_rss_mb: float | None = None
    transport: str = "memory"
    #: Peak RSS of each process of a distributed run, by role.
    rss_by_process_mb: dict[str, float] = field(default_factory=dict)
    #: Share of one core each process used during the 32-client run (1.0 = a full core).
    cpu_by_process: dict[str, float] = field(default_factory=dict)


def percentile(sorted_ms: list[float], q: float) -> float:
    """The q-quantile (0..1) of sorted values, nearest rank."""
    index = min(len(sorted_ms) - 1, max(0, round(q * (len(sorted_ms) - 1))))
    return sorted_ms[index]


def progress(label: str, done: int, total: int) -> None:
    """A one-line progress bar on stderr."""
    width = 30
    filled = int(width * done / total)
    end = "\n" if done == total else ""
    print(
        f"\r  {label:<34} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}",
        end=end,
        file=sys.stderr,
        flush=True,
    )


def measure_latency(call: Callable[[], object], n: int, label: str) -> list[float]:
    """Sequential calls; returns sorted latencies in ms."""
    for _ in range(min(20, n)):
        call()
    samples = []
    for i in range(n):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
        if i % 25 == 0 or i == n - 1:
            progress(label, i + 1, n)
    return sorted(samples)


def measure_throughput(
    make_call: Callable[[], Callable[[], object]], clients: int, total: int, label: str
) -> float:
    """``clients`` threads share ``total`` calls; returns completed calls per second."""
    remaining = [total]
    done = [0]
    lock = threading.Lock()

    def client() -> None:
        call = make_call()
        while True:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            call()
            with lock:
                done[0] += 1
                if done[0] % 50 == 0 or done[0] == total:
                    progress(label, done[0], total)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        try:
            for future in [pool.submit(client) for _ in range(clients)]:
                future.result()
        except BaseException:
            with lock:  # on an error or Ctrl-C, let the other clients stop after their call
                remaining[0] = 0
            raise
    return total / (time.perf_counter() - start)


# -- Celeriac, as a separate server process ------------------------------------------------------


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident memory (Linux), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@contextmanager
def celeriac_server(
    env: dict[str, str], token: str = ""
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``celeriac serve`` of the quick start in a fresh data folder; yields its URL. With a
    ``token`` scope, a token of that scope is made first and its value put in ``env``
    (``CELERIAC_TOKEN``), so that every request needs it."""
    workdir = Path(tempfile.mkdtemp(prefix="celeriac-bench-"))
    shutil.copytree(QUICKSTART, workdir / "quickstart")
    port = free_port()
    script = Path(sys.executable).parent / "celeriac"
    if token:
        made = subprocess.run(
            [str(script), "tokens", "create", "--scope", token],
            env={**os.environ, "CELERIAC_DATA_DIR": str(workdir / ".celeriac"), **env},
            capture_output=True,
            text=True,
            check=True,
        )
        env["CELERIAC_TOKEN"] = made.stdout.strip()
    command = [
        str(script),
        "serve",
        str(workdir / "quickstart" / "deployment.yml"),
        "--port",
        str(port),
    ]
    full_env = {**os.environ, "CELERIAC_DATA_DIR": str(workdir / ".celeriac"), **env}
    proc = subprocess.Popen(
        command, cwd=workdir, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise RuntimeError(f"celeriac serve exited early:\n{out}")
            try:
                ready = httpx.get(f"{url}/deployments/QuickStart", timeout=1, headers=auth(env))
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("celeriac serve did not become ready in 60 s")
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def auth(env: dict[str, str]) -> dict[str, str]:
    """The Authorization header of the token in ``env``, if any."""
    token = env.get("CELERIAC_TOKEN", "")
    return {"Authorization": f"Bearer {token}"} if token else {}


def http_caller(
    url: str,
    headers: dict[str, str] | None = None,
    deployment: str = "QuickStart",
    service: str | None = None,
) -> Callable[[], Callable[[], object]]:
    """Makes one keep-alive connection per caller of ``tasks/run`` on the server at ``url``
    (of the deployment's default service unless ``service`` names one), which must answer
    as the quick start's echo does.

    The load comes from the standard library's ``http.client``, lean as a load generator
    should be: httpx costs about 0.7 ms of CPU per call here, three times as much, and on a
    machine of two cores the clients' CPU is taken from the servers they measure.
    """
    parts = urlsplit(url)
    path = f"/deployments/{deployment}/tasks/run"
    task: dict[str, str] = {"input": json.dumps({"message": "hello"})}
    if service is not None:
        task["service_id"] = service
    body = json.dumps(task).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}

    def make_call() -> Callable[[], object]:
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)

        def call() -> object:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            text = response.read()
            if response.status != 200 or json.loads(text) != ECHO_ANSWER:
                raise RuntimeError(f"unexpected answer {response.status}: {text!r}")
            return text

        return call

    return make_call


def bench_celeriac(args: argparse.Namespace, env: dict[str, str], label: str) -> Figures:
    """Latency and throughput of ``POST /deployments/QuickStart/tasks/run``."""
    print(f"{label}: starting celeriac serve", file=sys.stderr)
    env = dict(env)
    with celeriac_server(env, args.token) as (url, proc):
        make_call = http_caller(url, auth(env))
        latencies = measure_latency(make_call(), args.calls, f"{label} latency")
        tps8 = measure_throughput(make_call, 8, args.tasks, f"{label} 8 clients")
        tps32 = measure_throughput(make_call, 32, args.tasks, f"{label} 32 clients")
        rss = peak_rss_mb(proc.pid)
    return Figures(
        label,
        percentile(latencies, 0.5),
        percentile(latencies, 0.95),
        percentile(latencies, 0.99),
        tps8,
        tps32,
        rss,
    )


# -- Raw Celery on the same broker ---------------------------------------------------------------


def bench_raw_celery(args: argparse.Namespace, transport: str | None, label: str) -> Figures:
    """``echo.apply_async().get()`` with a real worker consuming in this process."""
    from celery import Celery
    from celery.contrib.testing.worker import start_worker

    app = Celery("raw", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.update(
        broker_transport=transport,
        broker_transport_options={"polling_interval": 0.001},
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        worker_prefetch_multiplier=1,
    )

    @app.task(name="raw.echo", shared=False)
    def echo(message: str) -> str:
        return f"Message received: {message}"

    with start_worker(
        app, pool="threads", concurrency=8, perform_ping_check=False, shutdown_timeout=30
    ):

        def make_call() -> Callable[[], object]:
            def call() -> object:
                return echo.apply_async(kwargs={"message": "hello"}).get(timeout=60, interval=0.001)

            return call

        latencies = measure_latency(make_call(), args.calls, f"{label} latency")
        tps8 = measure_throughput(make_call, 8, args.tasks, f"{label} 8 clients")
        tps32 = measure_throughput(make_call, 32, args.tasks, f"{label} 32 clients")
    return Figures(
        label,
        percentile(latencies, 0.5),
        percentile(latencies, 0.95),
        percentile(latencies, 0.99),
        tps8,
        tps32,
        peak_rss_mb(os.getpid()),
    )


def print_table(rows: list[Figures]) -> None:
    """The embedded mode's figures as a Markdown table."""
    print(
        "| system | p50 ms | p95 ms | p99 ms | tasks/s, 8 clients | tasks/s, 32 clients |"
        " peak RSS MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        rss = f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb else "-"
        print(
            f"| {r.system} | {r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.p99_ms:.1f} | {r.tps_8:.0f} |"
            f" {r.tps_32:.0f} | {rss} |"
        )


def comparison(celeriac: Figures, raw: Figures) -> str:
    """One line: Celeriac's latency and throughput as multiples of raw Celery's, and the goal."""
    latency = celeriac.p50_ms / raw.p50_ms
    throughput = celeriac.tps_32 / raw.tps_32
    met = latency <= GOAL_LATENCY and throughput >= GOAL_THROUGHPUT
    return (
        f"{celeriac.transport}: Celeriac's p50 latency is {latency:.1f}x raw Celery's "
        f"(goal <= {GOAL_LATENCY:g}x), its throughput with 32 clients {throughput:.2f}x "
        f"(goal >= {GOAL_THROUGHPUT:.2f}x): goal {'met' if met else 'missed'}"
    )


def bench_memory(args: argparse.Namespace) -> list[Figures]:
    """The embedded mode, measured exactly as the README reports it."""
    with_token = f", {args.token} token" if args.token else ""
    return [
        bench_celeriac(args, {}, f"Celeriac embedded (HTTP, memory://, SQLite{with_token})"),
        bench_raw_celery(
            args, "workers.transports:MemoryTransport", "raw Celery, Celeriac's memory:// transport"
        ),
        bench_raw_celery(args, None, "raw Celery, kombu memory:// (1 ms polling)"),
    ]


def add_service_options(parser: argparse.ArgumentParser) -> None:
    """The options naming the Redis, RabbitMQ and PostgreSQL a distributed run uses."""
    parser.add_argument(
        "--redis-url",
        help="Redis database to flush and use [default: an empty one of the local Redis]",
    )
    parser.add_argument(
        "--amqp-url",
        help="RabbitMQ virtual host [default: a private one of the local RabbitMQ, if rabbitmqctl"
        " works, else its default one]",
    )
    parser.add_argument(
        "--pg-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL to create and drop a benchmark database in",
    )


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="sequential calls for latency")
    parser.add_argument("--tasks", type=int, default=1500, help="tasks per throughput run")
    parser.add_argument("--quick", action="store_true", help="50 calls, 200 tasks")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--token",
        choices=["admin", "run"],
        default="",
        help="embedded server with an API token of this scope, sent with every call",
    )
    parser.add_argument(
        "--transport", choices=[*TRANSPORTS, "all"], default="memory", help="broker(s) to measure"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="Celeriac service workers (distributed)"
    )
    add_service_options(parser)
    args = parser.parse_args()
    if min(args.calls, args.tasks, args.workers) < 1:
        parser.error("--calls, --tasks and --workers must be at least 1")
    if args.quick:
        args.calls, args.tasks = 50, 200
    return args


def run(args: argparse.Namespace) -> list[Figures]:
    """Every measurement asked for; prints the tables."""
    from tests.benchmarks import distributed

    transports = TRANSPORTS if args.transport == "all" else (args.transport,)
    remote = [t for t in transports if t != "memory"]
    distributed.preflight(remote, args)  # a broker that is down fails the run before it starts
    load = os.getloadavg()[0]
    embedded = bench_memory(args) if "memory" in transports else []
    spread: list[Figures] = []
    for transport in remote:
        spread += distributed.bench_transport(args, transport)
    print(f"\n{os.cpu_count()} CPUs, Python {sys.version.split()[0]}", end="")
    print(f", load average {load:.1f} before the run and {os.getloadavg()[0]:.1f} after\n")
    if embedded:
        print_table(embedded)
        print(f"\n{comparison(embedded[0], embedded[1])}\n")
    if spread:
        distributed.print_table(spread)
        print()
        for line in distributed.comparisons(spread):
            print(line)
        distributed.print_cpu(spread)
    return embedded + spread


def _exit_on_sigterm(_signum: int, _frame: Any) -> None:
    """SIGTERM unwinds like Ctrl-C, so every child process is stopped on the way out."""
    raise SystemExit(143)


def main() -> None:
    """Parse options, run every measurement, print the tables."""
    args = parse_args()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    started = time.monotonic()
    try:
        rows = run(args)
    except RuntimeError as exc:
        sys.exit(f"\nbenchmark failed: {exc}")
    except httpx.HTTPError as exc:  # a call to Celeriac got no answer within 60 s, for one
        sys.exit(f"\nbenchmark failed: a call to Celeriac failed: {type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        sys.exit("\ninterrupted: every process the benchmark started is stopped")
    print(f"\nWhole run: {time.monotonic() - started:.0f} s.")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
