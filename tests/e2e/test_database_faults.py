"""Database faults, with real processes: a PostgreSQL of the test's own goes away for a while,
stopped (connections are refused) or frozen (connections hang), under a Redis broker, an API
server, the control-plane consumer and two service workers running a counted batch.

While it is away, the API answers every request with 503 and Retry-After, within the database
timeout: never a 500, never a hang. When it returns, everything goes on by itself: the batch
completes, each task recorded once and run once by the workflow's own count, and a task
whose creation was answered runs; one answered 503 either names the task it may have stored,
or stored nothing.
"""

from __future__ import annotations

import collections
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask
from werkzeug.test import TestResponse

import migrations
from app.control.events import KEEP_ALIVE
from app.errors import RETRY_AFTER
from app.factory import create_app
from app.orchestrator import RETRY_BACKOFF_MAX
from config.settings import Settings
from tests.conftest import QUICKSTART, deploy
from tests.e2e.batches import Runs, assert_batch_complete, start, submit, unfinished
from tests.e2e.conftest import Platform, node
from tests.support.processes import Processes, poll, require_module
from tests.support.servers import PrivatePostgres

#: The platforms' ``CELERIAC_DATABASE_TIMEOUT``: how long a process waits for the database.
DATABASE_TIMEOUT = 3.0
#: Beyond the database timeout, how late an answer may come on this shared two-core machine.
ANSWER_SLACK = 2.0
#: How long the database stays away: longer than any answer may take.
OUTAGE = 12.0
#: Beyond the longest retry of a report, how long the batch's last tasks may take to end.
RECOVERY_SLACK = 10.0
#: Tasks of the batch in flight when the database goes away, and how long each one sleeps.
BATCH = 60
NAP = 0.3
#: Numbers of the tasks the clients create and run during the outage, and of the long task.
CREATED, RUN, LONG = 1000, 2000, 900
#: The count of the requests sent the moment the database goes away (the loops count from 0).
ASKED_NOW = 500
SSE = {"Accept": "text/event-stream"}

pytestmark = pytest.mark.e2e


@pytest.fixture
def platform(
    redis_url: str, private_postgres: PrivatePostgres, tmp_path: Path, processes: Processes
) -> Iterator[Platform]:
    """A distributed platform on Redis and the test's own PostgreSQL (nothing started yet)."""
    workdir = tmp_path / "platform"
    workdir.mkdir()
    made = Platform(redis_url, private_postgres.url, workdir, processes)
    made.settings["CELERIAC_DATABASE_TIMEOUT"] = str(DATABASE_TIMEOUT)
    try:
        yield made
    finally:
        made.close()


@dataclass(frozen=True)
class Answer:
    """One request of a client and what came back (``status`` names a transport error)."""

    kind: str
    #: The task id and number the client gave a task it created or ran.
    task_id: str | None
    n: int | None
    sent: float
    took: float
    status: int | str
    retry_after: str | None
    errors: dict[str, Any]

    @property
    def ended(self) -> float:
        """When the answer came (``time.monotonic``)."""
        return self.sent + self.took


class Clients:
    """Threads that keep listing tasks, creating tasks and running tasks, each with a task id
    of its own, and note every answer."""

    def __init__(self, platform: Platform, runs: Runs) -> None:
        self.platform = platform
        self.runs = runs
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(kind,), name=f"client-{kind}")
            for kind in ("list", "create", "run")
        ]

    def start(self) -> None:
        """Start every client."""
        for thread in self._threads:
            thread.start()

    def ask_now(self, kind: str) -> None:
        """Send one more request at once (in a thread of its own), numbered apart."""
        thread = threading.Thread(target=self._once, args=(kind,), name=f"client-{kind}-now")
        self._threads.append(thread)
        thread.start()

    def stop(self) -> list[Answer]:
        """Stop the clients after their requests in flight; every answer."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
            assert not thread.is_alive(), f"{thread.name} still waits for an answer"
        return self.answers

    def _loop(self, kind: str) -> None:
        # A long client timeout: a request that hangs shows as a slow answer.
        with httpx.Client(base_url=self.platform.server, timeout=120.0) as http:
            count = 0
            while not self._stop.is_set():
                self._ask(http, kind, count)
                count += 1
                self._stop.wait(0.2)

    def _once(self, kind: str) -> None:
        with httpx.Client(base_url=self.platform.server, timeout=120.0) as http:
            self._ask(http, kind, ASKED_NOW)

    def _ask(self, http: httpx.Client, kind: str, count: int) -> None:
        path = "/deployments/Counted/tasks"
        task_id, n = None, None
        sent = time.monotonic()
        try:
            if kind == "list":
                response = http.get(path, params={"limit": 1000})
            else:
                task_id, n = f"{kind}-{count}", (CREATED if kind == "create" else RUN) + count
                kwargs = {"n": n, "seconds": 0, "log": str(self.runs.path)}
                body = {"input": json.dumps(kwargs), "task_id": task_id}
                params = {"timeout": 60} if kind == "run" else {}
                response = http.post(f"{path}/{kind}", json=body, params=params)
            status: int | str = response.status_code
            retry_after = response.headers.get("Retry-After")
            errors = response.json().get("errors", {}) if status >= 400 else {}
        except httpx.HTTPError as exc:
            status, retry_after, errors = type(exc).__name__, None, {}
        took = time.monotonic() - sent
        with self._lock:
            self.answers.append(Answer(kind, task_id, n, sent, took, status, retry_after, errors))


class Follower(threading.Thread):
    """Follows a task's SSE stream to its ``end`` event as a browser would: on a dropped
    connection it connects again with ``Last-Event-ID``, after a 503 it waits Retry-After.
    Notes the longest time it went without hearing anything (data, keep-alive, an answer or
    a closed connection)."""

    def __init__(self, platform: Platform, task_id: str) -> None:
        super().__init__(name="follower", daemon=True)
        self.url = f"{platform.server}/deployments/Counted/tasks/{task_id}/events"
        self.end: dict[str, Any] | None = None
        self.event_types: list[str] = []
        self.statuses: list[int | str] = []
        self.longest_silence = 0.0
        self._last_id: str | None = None
        self._heard = time.monotonic()

    def run(self) -> None:
        deadline = time.monotonic() + 240
        with httpx.Client(timeout=120.0) as http:
            while self.end is None and time.monotonic() < deadline:
                self._follow_once(http)

    def _hear(self) -> None:
        now = time.monotonic()
        self.longest_silence = max(self.longest_silence, now - self._heard)
        self._heard = now

    def _follow_once(self, http: httpx.Client) -> None:
        headers = dict(SSE)
        if self._last_id is not None:
            headers["Last-Event-ID"] = self._last_id
        self._heard = time.monotonic()
        event = None
        try:
            with http.stream("GET", self.url, headers=headers) as response:
                self._hear()
                self.statuses.append(response.status_code)
                if response.status_code != 200:
                    time.sleep(float(response.headers.get("Retry-After", 1)))
                    return
                for line in response.iter_lines():
                    self._hear()
                    if line.startswith("id: "):
                        self._last_id = line[4:]
                    elif line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event is not None:
                        if event == "end":
                            self.end = json.loads(line[6:])
                            return
                        self.event_types.append(event)
        except httpx.HTTPError as exc:
            self._hear()
            self.statuses.append(type(exc).__name__)
        time.sleep(1.0)  # the stream's ``retry``


def away_and_back(private_postgres: PrivatePostgres, fault: str) -> tuple[Callable[[], None], ...]:
    """How the database goes away (stopped: refused; frozen: hanging) and comes back."""
    if fault == "refused":
        return private_postgres.stop, private_postgres.start
    return private_postgres.freeze, private_postgres.thaw


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["refused", "hanging"])
def test_while_the_database_is_away_the_api_answers_503_in_time_and_all_recovers_when_back(
    platform: Platform,
    private_postgres: PrivatePostgres,
    counted: Path,
    tmp_path: Path,
    fault: str,
) -> None:
    """The database stops (or freezes) for a while under load; clients keep reading,
    creating and running tasks, and follow a task's event stream."""
    # Given two service workers, a batch in flight, and a client following a long task's
    # event stream
    runs = Runs(tmp_path / "runs.log")
    start(platform, counted)
    [long_id] = submit(platform, runs, 1, seconds=OUTAGE + 4, first=LONG)
    ids = submit(platform, runs, BATCH, seconds=NAP)
    follower = Follower(platform, long_id)
    follower.start()
    poll(lambda: len(runs.read()), lambda n: n >= 10, 30, "the batch under way")
    clients = Clients(platform, runs)
    clients.start()

    # When the database goes away for a while, with tasks of the batch unfinished
    go_away, come_back = away_and_back(private_postgres, fault)
    time.sleep(1.0)
    left = unfinished(platform, ids)
    go_away()
    down_at = time.monotonic()
    # (two requests sent at once, on connections the database had open: theirs may be the
    # ones on their way when it went)
    for kind in ("create", "run"):
        clients.ask_now(kind)
    time.sleep(OUTAGE)
    # (the database may accept connections before ``come_back`` returns: the outage ends
    # when its coming back begins)
    returning_at = time.monotonic()
    come_back()
    back_at = time.monotonic()
    time.sleep(2.0)
    answers = clients.stop()

    # Then every request was answered 200 or 503, never a 500 nor a dropped connection; and
    # in time, but for a tasks/run that ran its task (and may have waited for the control
    # plane to catch up)
    odd = [a for a in answers if a.status not in (200, 503)]
    assert not odd, odd
    timed = [a for a in answers if (a.kind, a.status) != ("run", 200)]
    slowest = max(timed, key=lambda a: a.took)
    assert slowest.took <= DATABASE_TIMEOUT + ANSWER_SLACK, slowest
    # And each one answered while the database was away was a 503 with Retry-After
    during = [a for a in answers if a.sent >= down_at and a.ended <= returning_at]
    kinds = collections.Counter(a.kind for a in during)
    assert min(kinds[k] for k in ("list", "create", "run")) >= 2, kinds
    wrong = [a for a in during if (a.status, a.retry_after) != (503, str(RETRY_AFTER))]
    assert not wrong, wrong

    # And the batch completes by itself: each task recorded once, and run once
    assert left > 0, "the batch ended before the database went away: too quick"
    twice = assert_batch_complete(platform, ids, runs)
    assert not twice, f"tasks run more than once: {twice}"
    # And a task whose creation was answered runs once; one answered 503 either names the
    # task it may have stored, which then runs once, or stored nothing
    submitted = [a for a in answers if a.task_id is not None]
    stored = set(platform.tasks("Counted"))
    for answer in submitted:
        if answer.status == 503 and "task_id" not in answer.errors:
            assert answer.task_id not in stored, answer
        if answer.status == 503:
            assert answer.errors.get("task_id", answer.task_id) == answer.task_id, answer
        if answer.status == 200:
            assert answer.task_id in stored, answer
    named = [a for a in submitted if a.status == 503 and "task_id" in a.errors]
    made = {a.task_id: a.n for a in submitted if a.task_id in stored}
    tasks = platform.wait_for_tasks("Counted", list(made))
    assert {t["status"] for t in tasks.values()} <= {"succeeded"}, tasks
    assert platform.stop_events(list(made)) == dict.fromkeys(made, 1)
    counts = {n: len(r) for n, r in runs.read().items() if n >= CREATED}
    assert counts == dict.fromkeys(made.values(), 1), counts
    # And all that within the longest retry of a report (and the long task's end)
    recovered_in = time.monotonic() - back_at
    assert recovered_in <= RETRY_BACKOFF_MAX + RECOVERY_SLACK, recovered_in

    # And the stream was never silent for long, and ended with the task
    follower.join(timeout=120)
    assert follower.end == {"task_id": long_id, "status": "succeeded"}, follower.statuses
    assert follower.event_types == ["StopEvent"], follower.event_types
    assert follower.longest_silence <= KEEP_ALIVE + DATABASE_TIMEOUT + ANSWER_SLACK, (
        follower.longest_silence,
        follower.statuses,
    )

    # And nobody had to be restarted: a new batch goes through every process
    more = submit(platform, runs, 10, seconds=0.0, first=100)
    assert not assert_batch_complete(platform, more, runs, first=100)
    platform.wait_for_workers("Counted", {node("w1"), node("w2")})
    dead = [p.name for p in platform.processes.started if p.name != "postgres" and not p.alive()]
    assert not dead, f"processes died: {dead}"
    print(
        f"\ndatabase {fault}: {len(during)} answers during the outage, slowest answer "
        f"{slowest.took:.2f} s ({slowest.kind}, {slowest.status}); {len(named)} named the task "
        f"they may have stored ({sum(a.task_id in stored for a in named)} stored); "
        f"{left} tasks unfinished at the "
        f"fault; batch and clients' tasks done {recovered_in:.1f} s after the database came "
        f"back; stream silent {follower.longest_silence:.1f} s at most, statuses "
        f"{follower.statuses}"
    )


@pytest.fixture
def app_on_postgres(postgres_url: str, tmp_path: Path) -> Iterator[Flask]:
    """An API server (in this process, on the memory broker, with no workers) on a fresh
    PostgreSQL database that it waits for one second at a time, serving the quick start."""
    migrations.upgrade(postgres_url)
    settings = Settings(
        data_dir=tmp_path / ".celeriac", database_url=postgres_url, database_timeout=1.0
    )
    app = create_app(settings)
    assert deploy(app.test_client(), QUICKSTART).status_code == 200
    yield app
    app.extensions["celeriac"].close()


@contextlib.contextmanager
def tasks_locked(url: str) -> Iterator[None]:
    """The tasks table locked by another session (reads and writes of it wait) until the
    block ends."""
    psycopg = require_module("psycopg")
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:
        conn.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()


def answered(request: Callable[[], TestResponse], within: float = 1.0 + 1.0) -> TestResponse:
    """The answer to ``request``, which must come within ``within`` seconds."""
    answers: list[TestResponse] = []
    asking = threading.Thread(target=lambda: answers.append(request()), daemon=True)
    asking.start()
    asking.join(timeout=within)
    assert answers, f"no answer within {within:g} s"
    return answers[0]


def test_a_database_that_does_not_answer_in_time_gives_503_naming_the_task_it_may_store(
    app_on_postgres: Flask, postgres_url: str
) -> None:
    """A statement the database holds past the timeout is given up: the client hears 503 at
    once, and a task whose insert was on its way is named, as the database may store it."""
    client = app_on_postgres.test_client()
    body = {"input": json.dumps({"message": "hi"})}
    # Given the database holding every statement on tasks (a lock here, a frozen server or a
    # cut network elsewhere)
    with tasks_locked(postgres_url):
        # When a client lists tasks, and runs one
        listed = answered(lambda: client.get("/deployments/QuickStart/tasks"))
        run = answered(lambda: client.post("/deployments/QuickStart/tasks/run", json=body))
        # Then each gets 503 with Retry-After, within the timeout (and a little more)
        for response in (listed, run):
            assert response.status_code == 503, response.get_data(as_text=True)
            assert response.headers["Retry-After"] == str(RETRY_AFTER)
        # And the list stored nothing; the run names its task, whose fate is unknown
        assert "errors" not in listed.get_json()
        errors = run.get_json()["errors"]
        assert (errors["status"], errors["published"]) == ("unknown", False), errors
        assert "send it again with task_id" in run.get_json()["message"].lower()
    # When the database goes on: it did store the task (its insert waited for the lock)
    task_id = errors["task_id"]
    poll(
        lambda: client.get(f"/deployments/QuickStart/tasks/{task_id}").status_code,
        lambda status: status == 200,
        10,
        "the task stored once the lock went",
    )
    # Then sending it again under its id is refused: it is not run twice
    again = client.post("/deployments/QuickStart/tasks/run", json=body | {"task_id": task_id})
    assert again.status_code == 409, again.get_data(as_text=True)
    # And the server works again on its own
    assert client.get("/deployments/QuickStart/tasks").status_code == 200
