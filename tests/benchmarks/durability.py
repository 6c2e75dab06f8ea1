"""Benchmark: what a durable service costs, beside the same service not durable and raw Celery.

Run from the repository root (after the README's install), with Redis, RabbitMQ and
PostgreSQL running:

    python -m tests.benchmarks.durability                          # Redis and RabbitMQ
    python -m tests.benchmarks.durability --transport redis --calls 20 --tasks 200 --clients 4

On each broker, one run starts Celeriac's three processes (API server, control-plane consumer,
``--workers`` service workers of 8 threads; PostgreSQL) for the deployment in
``tests/benchmarks/steps`` and a raw Celery worker (``tests/benchmarks/raw_app.py``), then
measures, all of them up at once:

1. Three steps chained by events, trivial work: ``tasks/run`` of the service that runs them
   durably (a journal message at each step's end), of the same workflow not durable, and raw
   Celery's ``apply_async().get()`` of a task that runs the same workflow object in the
   worker's thread. Sequential latency over ``--calls`` calls, then throughput with
   ``--clients`` clients over ``--tasks`` tasks, the systems taking turns as in
   ``tests/benchmarks/distributed.py``. Durability's cost per step is the difference of the
   two services' p50 divided by three (goal: under 2 ms).
2. Park and resume: a durable workflow asks a question (``ask``) and waits; service workers let
   a waiting run go after ``--release-after`` seconds. The time from sending the answer
   (``POST .../events``) to the task's stream ending (it succeeded) is measured ``--calls``
   times with the answer sent as soon as the question is seen (not parked), as many times
   once the task is parked (its run resumes from its journal, on any worker), and as many
   times for the same workflow not durable (``ask_plain``), the kinds taking turns. Parked
   less not parked is what a resume costs. Parking itself is off the answer's path: its time
   is the task's ``parked_at`` less the time it asked and ``--release-after``.
3. With ``--parked N``, a crowd: N durable tasks that ask are started at once and all parked
   (N far above the workers' threads), then all answered. The service workers' resident
   memory and threads (from ``/proc``) and the p50 of sequential three-step durable calls are
   read before, while all N are parked, and after they succeeded: a parked run holds no
   thread and no memory of its worker.

Progress goes to stderr; the tables (Markdown) to stdout; ``--json FILE`` also saves the
figures. Ctrl-C stops every process the run started.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from workflows.context.serializers import JsonSerializer
from workflows.events import HumanResponseEvent

from tests.benchmarks import distributed
from tests.benchmarks.bench import (
    Figures,
    add_service_options,
    http_caller,
    measure_latency,
    percentile,
    progress,
)
from tests.benchmarks.distributed import (
    Broker,
    Child,
    Deployed,
    System,
    broker_for,
    celeriac_cluster,
    echo_answered,
    fresh_database,
    measure,
    raw_caller,
    raw_worker,
    wait_until,
)
from tests.benchmarks.raw_app import STEPS, create_app

STEPS_FOLDER = Path(__file__).resolve().parent / "steps"
DEPLOYED = Deployed(STEPS_FOLDER, "DurableBench", ("durable", "plain", "ask", "ask_plain"))
TRANSPORTS = ("redis", "amqp")
#: Steps of the measured workflow: durability's cost is divided among them.
STEPS_PER_TASK = 3
#: Durability's cost per step must stay under this many milliseconds (p50).
GOAL_PER_STEP_MS = 2.0
#: Tasks of the ``ask`` service started at once, then answered one by one once all are parked.
PARKED_BATCH = 10
#: Rounds of the park measurement, not parked and parked taking turns.
PARK_ROUNDS = 4
#: Sequential three-step calls measured at each moment of the crowd (``--parked``).
CROWD_CALLS = 30
ANSWER = "42"
ANSWERED = f"Answer received: {ANSWER}"
#: The answer, as ``POST .../events`` takes it (``event_obj_str``).
HUMAN_RESPONSE = JsonSerializer().serialize(HumanResponseEvent(response=ANSWER))  # type: ignore[call-arg]


@dataclass
class ParkFigures:
    """Answer-to-success times of a question on one broker: not durable, durable and not
    parked, durable and parked."""

    transport: str
    release_after: float
    #: Sorted milliseconds from the answer sent to the task's end.
    plain_ms: list[float]
    not_parked_ms: list[float]
    parked_ms: list[float]
    #: Sorted milliseconds from the question to ``parked_at``, less ``release_after``.
    park_ms: list[float]
    #: Samples meant not to be parked that were (the answer came after the release): left out.
    parked_anyway: int = 0


@dataclass
class CrowdFigures:
    """``--parked`` tasks parked at once on one broker, then answered: the service workers'
    memory and threads, and three-step latency, before, while all are parked, and after."""

    transport: str
    tasks: int
    #: By moment (``before``, ``parked``, ``answered``): the service workers' resident MB.
    rss_mb: dict[str, float]
    #: By moment: the service workers' threads.
    threads: dict[str, int]
    #: By moment: p50 ms of sequential three-step durable calls.
    steps_p50_ms: dict[str, float]
    #: Seconds from the first task started to the last one parked.
    parked_s: float
    #: Seconds from the first answer sent to the last task succeeded.
    answered_s: float


# -- the ask service, over HTTP ------------------------------------------------------------------


class Questions:
    """Tasks of the ``ask`` services: started, awaited, answered, each over HTTP."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "", parts.port
        self._conn = http.client.HTTPConnection(self._host, self._port, timeout=60)
        self._tasks = f"/deployments/{DEPLOYED.name}/tasks"

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        self._conn.request(method, path, body=data, headers=headers)
        response = self._conn.getresponse()
        text = response.read()
        if response.status != 200:
            raise RuntimeError(f"{method} {path} answered {response.status}: {text!r}")
        return json.loads(text)

    def start(self, service: str = "ask") -> str:
        """Queue a task of the service (``ask``, or ``ask_plain`` that is not durable); its
        id."""
        body = {"service_id": service, "input": json.dumps({})}
        return str(self._call("POST", f"{self._tasks}/create", body)["task_id"])

    def task(self, task_id: str) -> dict[str, Any]:
        """The task as the API shows it."""
        task: dict[str, Any] = self._call("GET", f"{self._tasks}/{task_id}")
        return task

    def asked_at(self, task_id: str) -> datetime:
        """When the task asked its question (its timeline's ``waiting_input``)."""
        moments = self._call("GET", f"{self._tasks}/{task_id}/timeline")
        for moment in moments:
            if moment["status"] == "waiting_input":
                return datetime.fromisoformat(moment["at"])
        raise RuntimeError(f"task {task_id} has not asked: {moments}")

    def answer(self, task_id: str) -> None:
        """Send the task its answer."""
        self._call("POST", f"{self._tasks}/{task_id}/events", {"event_obj_str": HUMAN_RESPONSE})

    def wait_status(self, task_ids: list[str], done: Any, label: str, timeout: float) -> None:
        """Wait until ``done(task)`` holds for every task, showing how many do."""
        pending = list(task_ids)
        deadline = time.monotonic() + timeout
        while pending:
            pending = [task_id for task_id in pending if not done(self.task(task_id))]
            progress(label, len(task_ids) - len(pending), len(task_ids))
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"{label}: {len(pending)} task(s) not there in {timeout:g} s")
            if pending:
                time.sleep(0.2)

    def answer_timed(self, task_id: str) -> float:
        """Follow the task's stream to its question, answer it, and read the stream to its
        end; milliseconds from the answer sent to the end."""
        stream = http.client.HTTPConnection(self._host, self._port, timeout=60)
        try:
            stream.request("GET", f"{self._tasks}/{task_id}/events?raw_event=true")
            response = stream.getresponse()
            while b"InputRequiredEvent" not in (line := response.readline()):
                if not line:
                    raise RuntimeError(f"task {task_id}'s stream ended before its question")
            start = time.perf_counter()
            self._call("POST", f"{self._tasks}/{task_id}/events", {"event_obj_str": HUMAN_RESPONSE})
            while response.readline():
                pass
            elapsed = (time.perf_counter() - start) * 1000
        finally:
            stream.close()
        done = self.task(task_id)
        if done["status"] != "succeeded" or done["result"] != ANSWERED:
            raise RuntimeError(f"task {task_id} ended {done['status']}: {done}")
        return elapsed

    def wait_parked(self, task_ids: list[str], timeout: float) -> dict[str, datetime]:
        """Wait until every task is parked; when each was."""
        parked: dict[str, datetime] = {}
        deadline = time.monotonic() + timeout
        while len(parked) < len(task_ids):
            for task_id in task_ids:
                if task_id not in parked:
                    task = self.task(task_id)
                    if task["parked_at"] is not None:
                        parked[task_id] = datetime.fromisoformat(task["parked_at"])
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(task_ids) - len(parked)} task(s) not parked in time")
            time.sleep(0.02)
        return parked


#: The kinds of answer measured: (what the table calls it, what the progress bar does).
KINDS = (
    ("not durable", "ask, not durable"),
    ("durable, not parked", "ask, not parked"),
    ("durable, parked", "ask, parked"),
)


def measure_park(args: argparse.Namespace, url: str, transport: str) -> ParkFigures:
    """Answer-to-success times of each kind, in rounds whose order turns (after a few
    unmeasured answers of each kind)."""
    questions = Questions(url)
    figures = ParkFigures(transport, args.release_after, [], [], [], [])
    warm = ParkFigures(transport, args.release_after, [], [], [], [])
    try:
        for kind, label in KINDS:
            _answer(questions, warm, args, kind, min(3, args.calls), f"{transport} {label} warm-up")
        for n in range(PARK_ROUNDS):
            calls = distributed.share(args.calls, n, PARK_ROUNDS)
            turn = n % len(KINDS)
            for kind, label in KINDS[turn:] + KINDS[:turn]:
                rounds = f"{n + 1}/{PARK_ROUNDS}"
                _answer(questions, figures, args, kind, calls, f"{transport} {label} {rounds}")
    finally:
        questions.close()
    for samples in (figures.plain_ms, figures.not_parked_ms, figures.parked_ms, figures.park_ms):
        samples.sort()
    return figures


def _answer(
    questions: Questions,
    figures: ParkFigures,
    args: argparse.Namespace,
    kind: str,
    calls: int,
    label: str,
) -> None:
    """``calls`` answers of one kind."""
    if kind == "durable, parked":
        _parked(questions, figures, args, calls, label)
    else:
        _not_parked(questions, figures, kind == "durable, not parked", calls, label)


def _not_parked(
    questions: Questions, figures: ParkFigures, durable: bool, calls: int, label: str
) -> None:
    """Start a task and answer it as soon as it asks, ``calls`` times."""
    for i in range(calls):
        task_id = questions.start("ask" if durable else "ask_plain")
        elapsed = questions.answer_timed(task_id)
        if not durable:
            figures.plain_ms.append(elapsed)
        elif questions.task(task_id)["attempts"] == 1:
            figures.not_parked_ms.append(elapsed)
        else:  # a second run: it was let go before the answer came
            figures.parked_anyway += 1
        progress(label, i + 1, calls)


def _parked(
    questions: Questions, figures: ParkFigures, args: argparse.Namespace, calls: int, label: str
) -> None:
    """Start tasks a batch at a time, wait until all are parked, then answer each."""
    done = 0
    while done < calls:
        batch = [questions.start() for _ in range(min(PARKED_BATCH, calls - done))]
        parked = questions.wait_parked(batch, timeout=args.release_after + 60)
        for task_id in batch:
            asked = questions.asked_at(task_id)
            took = (parked[task_id] - asked).total_seconds() - args.release_after
            figures.park_ms.append(took * 1000)
            figures.parked_ms.append(questions.answer_timed(task_id))
            done += 1
            progress(label, done, calls)


def measure_crowd(
    args: argparse.Namespace, url: str, transport: str, children: list[Child]
) -> CrowdFigures:
    """Park ``--parked`` tasks at once, then answer them all; what the service workers hold
    and how three durable steps answer, before, while they are all parked, and after."""
    workers = [child for child in children if child.name.startswith("service worker")]
    steps_call = http_caller(url, deployment=DEPLOYED.name, service="durable")()
    rss: dict[str, float] = {}
    threads: dict[str, int] = {}
    steps_p50: dict[str, float] = {}

    def look(moment: str) -> None:
        held = [_process_status(child.proc.pid) for child in workers]
        rss[moment] = sum(mb for mb, _ in held)
        threads[moment] = sum(count for _, count in held)
        latencies = measure_latency(steps_call, CROWD_CALLS, f"{transport} steps, {moment}")
        steps_p50[moment] = percentile(latencies, 0.5)

    questions = Questions(url)
    try:
        look("before")
        started = time.monotonic()
        ids = []
        for n in range(args.parked):
            ids.append(questions.start())
            progress(f"{transport} crowd started", n + 1, args.parked)
        timeout = args.release_after * args.parked + 120
        questions.wait_status(ids, lambda t: t["parked_at"] is not None, "parked", timeout)
        parked_s = time.monotonic() - started
        look("parked")
        answering = time.monotonic()
        for n, task_id in enumerate(ids):
            questions.answer(task_id)
            progress(f"{transport} crowd answered", n + 1, args.parked)
        questions.wait_status(ids, _succeeded, "succeeded", timeout)
        answered_s = time.monotonic() - answering
        look("answered")
    finally:
        questions.close()
    return CrowdFigures(transport, args.parked, rss, threads, steps_p50, parked_s, answered_s)


def _succeeded(task: dict[str, Any]) -> bool:
    if task["status"] in ("failed", "cancelled", "timed_out"):
        raise RuntimeError(f"a task of the crowd ended {task['status']}: {task}")
    return bool(task["status"] == "succeeded" and task["result"] == ANSWERED)


def _process_status(pid: int) -> tuple[float, int]:
    """A process's resident memory (MB) and its threads, from ``/proc`` (Linux)."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"])


# -- one broker ----------------------------------------------------------------------------------


@contextmanager
def raw_steps_system(broker: Broker, logs: Path) -> Iterator[System]:
    """A raw Celery worker process; its task that runs the three steps, called from here."""
    from celery.exceptions import TimeoutError as ResultTimeout

    print(f"{broker.transport} raw Celery: starting the worker", file=sys.stderr)
    app = create_app(broker.url, broker.raw_backend, broker.raw_options)
    try:
        with raw_worker(broker, logs) as child:
            first = app.tasks[STEPS].apply_async(kwargs={"message": "hello"})
            ready = partial(echo_answered, first, ResultTimeout)
            wait_until(f"the raw Celery worker's first {STEPS}", ready, [child])
            results = f"threads x 8; results: {broker.raw_backend_name}"
            yield System(
                f"raw Celery + the same workflow ({results})", raw_caller(app, STEPS), [child]
            )
    finally:
        app.close()


def celeriac_systems(url: str, children: list[Child], workers: int) -> list[System]:
    """The durable service and the same workflow's service that is not durable."""
    threads = f"{workers} service worker{'s' if workers > 1 else ''} x 8 threads"
    return [
        System(
            f"Celeriac, {kind} (HTTP, PostgreSQL, {threads})",
            http_caller(url, deployment=DEPLOYED.name, service=service),
            children,
        )
        for kind, service in (("durable", "durable"), ("not durable", "plain"))
    ]


def bench_transport(
    args: argparse.Namespace, transport: str
) -> tuple[list[Figures], ParkFigures, CrowdFigures | None]:
    """Every measurement on one broker; the broker and the database cleaned after."""
    logs = Path(tempfile.mkdtemp(prefix=f"celeriac-durable-bench-{transport}-logs-"))
    done = False
    database = f"celeriac_durable_bench_{transport}_{os.getpid()}"
    settings = {"CELERIAC_RELEASE_AFTER": str(args.release_after)}
    try:
        with (
            broker_for(transport, args, logs, DEPLOYED) as broker,
            fresh_database(args.pg_url, database) as database_url,
        ):
            print(f"{transport} Celeriac: starting its processes", file=sys.stderr)
            with (
                celeriac_cluster(broker, database_url, args.workers, logs, DEPLOYED, settings) as (
                    url,
                    children,
                ),
                raw_steps_system(broker, logs) as raw,
            ):
                systems = [*celeriac_systems(url, children, args.workers), raw]
                figures = measure(args, broker, systems, args.clients)
                park = measure_park(args, url, transport)
                crowd = measure_crowd(args, url, transport, children) if args.parked else None
        done = True
    finally:
        if done:
            shutil.rmtree(logs, ignore_errors=True)
        else:
            print(f"\n{transport}: process logs kept in {logs}", file=sys.stderr)
    return figures, park, crowd


# -- the report ----------------------------------------------------------------------------------


def print_steps_table(rows: list[Figures], clients: int) -> None:
    """The three-step workflow's figures as a Markdown table."""
    print(f"| transport | system | p50 ms | p95 ms | p99 ms | tasks/s, {clients} clients |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r.transport} | {r.system} | {r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.p99_ms:.1f} |"
            f" {r.tps_32:.0f} |"
        )


def step_costs(rows: list[Figures]) -> Iterator[str]:
    """Per broker: durability's cost per step against the goal, and Celeriac against raw
    Celery running the same workflow."""
    for durable, plain, raw in zip(rows[::3], rows[1::3], rows[2::3], strict=True):
        per_step = (durable.p50_ms - plain.p50_ms) / STEPS_PER_TASK
        met = per_step < GOAL_PER_STEP_MS
        yield (
            f"{durable.transport}: durability costs {per_step:.2f} ms per step at p50 "
            f"(({durable.p50_ms:.1f} - {plain.p50_ms:.1f}) / {STEPS_PER_TASK}; goal under "
            f"{GOAL_PER_STEP_MS:g} ms): goal {'met' if met else 'missed'}; durable throughput "
            f"is {durable.tps_32 / plain.tps_32:.2f}x not durable's"
        )
        yield (
            f"{durable.transport}: against raw Celery running the same workflow, p50 latency "
            f"{durable.p50_ms / raw.p50_ms:.1f}x durable, {plain.p50_ms / raw.p50_ms:.1f}x not "
            f"durable; throughput {durable.tps_32 / raw.tps_32:.2f}x durable, "
            f"{plain.tps_32 / raw.tps_32:.2f}x not durable"
        )


def print_park_table(rows: list[ParkFigures]) -> None:
    """The question's figures as a Markdown table, then what a resume and a park cost."""
    print("| transport | the answer reaches a task | p50 ms | p95 ms | answers |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        for (kind, _), samples in zip(
            KINDS, (r.plain_ms, r.not_parked_ms, r.parked_ms), strict=True
        ):
            if samples:
                p50, p95 = percentile(samples, 0.5), percentile(samples, 0.95)
                print(f"| {r.transport} | {kind} | {p50:.1f} | {p95:.1f} | {len(samples)} |")
    print()
    for r in rows:
        if not (r.plain_ms and r.not_parked_ms and r.parked_ms):
            print(f"{r.transport}: too few answers of some kind to compare")
            continue
        still, parked = percentile(r.not_parked_ms, 0.5), percentile(r.parked_ms, 0.5)
        durable = still - percentile(r.plain_ms, 0.5)
        print(
            f"{r.transport}: a resume costs {parked - still:.1f} ms at p50 (parked - not parked); "
            f"durability {durable:.1f} ms on the answer's path (not parked - not durable); "
            f"parking takes {percentile(r.park_ms, 0.5):.1f} ms at p50 after the "
            f"{r.release_after:g} s wait, off the answer's path (question to parked_at)"
        )
        if r.parked_anyway:
            print(
                f"{r.transport}: {r.parked_anyway} answer(s) meant to come before the release "
                f"came after it ({r.release_after:g} s) and were left out: raise --release-after"
            )


def print_crowd_table(rows: list[CrowdFigures]) -> None:
    """What the service workers held, and how three durable steps answered, before a crowd
    was parked, while it was, and after it was answered."""
    print("| transport | moment | workers' RSS MB | workers' threads | 3 durable steps p50 ms |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        for moment, label in CROWD_MOMENTS:
            print(
                f"| {r.transport} | {label.format(tasks=r.tasks)} | {r.rss_mb[moment]:.1f} |"
                f" {r.threads[moment]} | {r.steps_p50_ms[moment]:.1f} |"
            )
    print()
    for r in rows:
        grown = (r.rss_mb["parked"] - r.rss_mb["before"]) * 1024 / r.tasks
        print(
            f"{r.transport}: {r.tasks} tasks parked in {r.parked_s:.1f} s and answered in "
            f"{r.answered_s:.1f} s ({r.tasks / r.answered_s:.0f} resumes/s); the workers' "
            f"memory moved by {grown:+.1f} KB per parked task, their threads by "
            f"{r.threads['parked'] - r.threads['before']:+d}"
        )


#: The moments of a crowd's table, and how it names them.
CROWD_MOMENTS = (
    ("before", "before"),
    ("parked", "{tasks} tasks parked"),
    ("answered", "all answered, succeeded"),
)


# -- the command line ----------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    """The command line (options as ``tests.benchmarks.bench`` names them)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--calls",
        type=int,
        default=300,
        help="sequential calls for latency, and answers of each kind (not durable, durable"
        " and not parked, parked)",
    )
    parser.add_argument("--tasks", type=int, default=1500, help="tasks per throughput run")
    parser.add_argument(
        "--clients", type=int, default=distributed.CLIENTS, help="concurrent clients for throughput"
    )
    parser.add_argument("--quick", action="store_true", help="50 calls, 200 tasks")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--transport", choices=[*TRANSPORTS, "all"], default="all", help="broker(s) to measure"
    )
    parser.add_argument("--workers", type=int, default=1, help="Celeriac service workers")
    parser.add_argument(
        "--parked",
        type=int,
        default=0,
        help="also park this many durable tasks at once, then answer them all (the issue's"
        " 1000): what the workers hold meanwhile [default: 0, not measured]",
    )
    parser.add_argument(
        "--release-after",
        type=float,
        default=0.5,
        help="seconds a durable run waits for input before it is let go (parked)",
    )
    add_service_options(parser)
    args = parser.parse_args()
    if min(args.calls, args.tasks, args.workers, args.clients) < 1:
        parser.error("--calls, --tasks, --clients and --workers must be at least 1")
    if args.parked < 0:
        parser.error("--parked must be 0 (not measured) or more")
    if args.release_after <= 0:
        parser.error("--release-after must be more than 0 seconds")
    if args.quick:
        args.calls, args.tasks = 50, 200
    return args


def run(
    args: argparse.Namespace,
) -> tuple[list[Figures], list[ParkFigures], list[CrowdFigures]]:
    """Every measurement asked for; prints the tables."""
    transports = list(TRANSPORTS) if args.transport == "all" else [args.transport]
    distributed.preflight(transports, args)  # a server that is down fails before any start
    load = os.getloadavg()[0]
    steps: list[Figures] = []
    parks: list[ParkFigures] = []
    crowds: list[CrowdFigures] = []
    for transport in transports:
        figures, park, crowd = bench_transport(args, transport)
        steps += figures
        parks.append(park)
        crowds += [crowd] if crowd is not None else []
    print(f"\n{os.cpu_count()} CPUs, Python {sys.version.split()[0]}", end="")
    print(f", load average {load:.1f} before the run and {os.getloadavg()[0]:.1f} after\n")
    print(f"Three steps chained by events ({args.calls} calls, {args.tasks} tasks):\n")
    print_steps_table(steps, args.clients)
    print()
    for line in step_costs(steps):
        print(line)
    distributed.print_cpu(steps, args.clients)
    print(
        f"\nA question answered (release_after {args.release_after:g} s, "
        f"{args.calls} answers of each kind):\n"
    )
    print_park_table(parks)
    if crowds:
        print(f"\n{args.parked} durable tasks parked at once, then answered:\n")
        print_crowd_table(crowds)
    return steps, parks, crowds


def _exit_on_sigterm(_signum: int, _frame: Any) -> None:
    """SIGTERM unwinds like Ctrl-C, so every child process is stopped on the way out."""
    raise SystemExit(143)


def main() -> None:
    """Parse options, run every measurement, print the tables."""
    args = parse_args()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    started = time.monotonic()
    try:
        steps, parks, crowds = run(args)
    except RuntimeError as exc:
        sys.exit(f"\nbenchmark failed: {exc}")
    except (httpx.HTTPError, http.client.HTTPException, OSError) as exc:
        sys.exit(f"\nbenchmark failed: a call to Celeriac failed: {type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        sys.exit("\ninterrupted: every process the benchmark started is stopped")
    print(f"\nWhole run: {time.monotonic() - started:.0f} s.")
    if args.json:
        figures = {
            "clients": args.clients,
            "steps": [asdict(r) for r in steps],
            "park": [asdict(p) for p in parks],
            "crowd": [asdict(c) for c in crowds],
        }
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
