"""The accounting: a watcher that follows every task's status while the soak runs, and the
final account of what became of each task, checked against what the load asked for and
against the workflow's own file of runs."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from app.models import TaskStatus
from tests.soak.console import Console
from tests.soak.faults import Fault
from tests.soak.load import Ledger, Planned
from tests.soak.workflow import PLANNED_FAILURE, expected_result

TERMINAL = frozenset(status.value for status in TaskStatus if status.terminal)
#: A task that takes longer than this from submission to its end is listed as late: far past
#: the lease's bound (5 s here), a slow task's run, and the API's or a process's restart.
LATE = 30.0
Query = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]


class Watcher:
    """Reads every task twice a second: how many are unfinished, when each ended, and any
    task whose record changed after it ended (recorded twice): its status, its worker, its
    start or its end. (A value filled in after the end is no change: an outcome may overtake
    its start report.)"""

    #: The columns read, after the id; the first is the status.
    COLUMNS = ("status", "worker", "started_at", "finished_at")

    def __init__(self, query: Query, console: Console) -> None:
        self.query = query
        self.console = console
        self._lock = threading.Lock()
        self.statuses: dict[str, str] = {}
        #: Task id to its first terminal status and when the watcher saw it (``time.time()``).
        self.ended: dict[str, tuple[str, float]] = {}
        #: Task id to its columns as they were when it ended (filled in since, where empty).
        self._at_end: dict[str, tuple[Any, ...]] = {}
        #: Task id to each change seen after it ended (``column: before -> after``).
        self.changed_after_end: dict[str, list[str]] = collections.defaultdict(list)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="watcher", daemon=True)

    def start(self) -> None:
        """Start watching."""
        self.look()
        self._thread.start()

    def stop(self) -> None:
        """Look one last time, then stop."""
        self._stopping.set()
        self._thread.join()
        self.look()

    def unfinished(self) -> int:
        """Tasks in the database that have not ended."""
        with self._lock:
            return sum(1 for s in self.statuses.values() if s not in TERMINAL)

    def count(self, status: str) -> int:
        """Tasks in the database with this status now."""
        with self._lock:
            return sum(1 for s in self.statuses.values() if s == status)

    def look(self) -> None:
        """Read every task once."""
        rows = self.query(f"SELECT id, {', '.join(self.COLUMNS)} FROM tasks", ())
        now = time.time()
        with self._lock:
            for task_id, *values in rows:
                self.statuses[task_id] = values[0]
                before = self._at_end.get(task_id)
                if before is None:
                    if values[0] in TERMINAL:
                        self._at_end[task_id] = tuple(values)
                        self.ended[task_id] = (values[0], now)
                    continue
                self._compare(task_id, before, values)

    def _compare(self, task_id: str, before: tuple[Any, ...], now: list[Any]) -> None:
        for name, old, new in zip(self.COLUMNS, before, now, strict=True):
            change = f"{name}: {old} -> {new}"
            if old is not None and old != new and change not in self.changed_after_end[task_id]:
                self.changed_after_end[task_id].append(change)
        kept = zip(before, now, strict=True)
        self._at_end[task_id] = tuple(new if old is None else old for old, new in kept)

    def _loop(self) -> None:
        while not self._stopping.wait(0.5):
            try:
                self.look()
            except Exception as exc:  # PostgreSQL is not faulted: say so, and keep trying
                self.console.warn(f"the watcher could not read the tasks: {exc!r}")


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of the workflow, as it noted itself: when, and in which process."""

    at: float
    pid: int


def read_runs(path: Path) -> dict[str, list[Run]]:
    """Task id to its runs, in order, from the workflow's file."""
    runs: dict[str, list[Run]] = collections.defaultdict(list)
    if path.exists():
        for line in path.read_text().splitlines():
            task_id, _kind, at, pid = line.split()
            runs[task_id].append(Run(float(at), int(pid)))
    for task_runs in runs.values():
        task_runs.sort(key=lambda r: r.at)
    return runs


@dataclasses.dataclass
class Account:
    """What became of every task, by the soak's own measures."""

    submitted: int = 0
    succeeded: int = 0
    failed_expected: int = 0
    #: Task id to why its end is not what its kind asked for.
    unexpected: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Task id to its status at the end (or ``missing``): it never ended, or was never stored.
    lost: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Task id to why it counts as recorded twice.
    recorded_twice: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Task id to how many times the workflow ran it, for those it ran more than once.
    executed_twice: dict[str, int] = dataclasses.field(default_factory=dict)
    #: Task id to the fault kind that explains its second run (``unexplained`` if none).
    twice_because: dict[str, str] = dataclasses.field(default_factory=dict)
    refused: int = 0
    never_stored: int = 0
    asked: int = 0
    answered: int = 0
    sessions: int = 0
    #: Task id to what is wrong with its place in its session.
    order_violations: dict[str, str] = dataclasses.field(default_factory=dict)
    faults: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    api_errors: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    #: Seconds from submission to the end the watcher saw, for every task that ended.
    times_to_end: list[float] = dataclasses.field(default_factory=list)
    #: Task id to its story, for the tasks that ended over ``LATE`` seconds after submission.
    late: dict[str, str] = dataclasses.field(default_factory=dict)
    duration: float = 0.0

    def passed(self) -> bool:
        """Nothing lost, nothing recorded twice, no unexpected end, no session out of order."""
        return not (self.lost or self.recorded_twice or self.unexpected or self.order_violations)


def account(
    ledger: Ledger,
    query: Query,
    watcher: Watcher,
    runs_file: Path,
    faults: list[Fault],
    worker_pids: dict[int, str],
    duration: float,
) -> Account:
    """Check every task the load sent against the database and the workflow's file."""
    rows = {row[0]: row for row in query(TASKS, ())}
    stops: dict[str, int] = dict(query(STOP_EVENTS, ()))
    runs = read_runs(runs_file)
    result = Account(duration=duration, api_errors=ledger.api_errors)
    result.faults.update(f.kind for f in faults)
    attempts = collections.defaultdict(list)
    for task_id, *attempt in query(ATTEMPTS, ()):
        attempts[task_id].append(attempt)
    planned = ledger.all()
    for task in planned:
        _one(task, rows.get(task.task_id), stops.get(task.task_id, 0), runs, result)
        ended = watcher.ended.get(task.task_id)
        if ended is not None:
            took = max(0.0, ended[1] - task.sent_at)
            result.times_to_end.append(took)
            if took > LATE:
                result.late[task.task_id] = story(
                    task, took, runs.get(task.task_id, []), attempts[task.task_id], worker_pids
                )
        changes = watcher.changed_after_end.get(task.task_id)
        if changes:
            result.recorded_twice[task.task_id] = "changed after it ended: " + "; ".join(changes)
    for task_id in result.executed_twice:
        result.twice_because[task_id] = explain(runs[task_id], faults, worker_pids)
    _sessions(planned, rows, runs, result)
    result.asked = sum(1 for t in planned if t.kind == "ask" and t.fate == "submitted")
    result.answered = len(ledger.answered)
    return result


TASKS = "SELECT id, status, result, error, finished_at, session_id FROM tasks"
ATTEMPTS = (
    "SELECT task_id, attempt, worker, started_at, finished_at, outcome FROM task_attempts "
    "ORDER BY task_id, attempt"
)
STOP_EVENTS = (
    "SELECT task_id, count(*) FROM events WHERE direction = 'out' AND type = 'StopEvent' "
    "GROUP BY task_id"
)


def _one(
    task: Planned,
    row: tuple[Any, ...] | None,
    stops: int,
    runs: dict[str, list[Run]],
    result: Account,
) -> None:
    """Account for one task."""
    ran = len(runs.get(task.task_id, []))
    if row is None:
        if task.fate == "unknown":
            result.never_stored += 1
        else:
            result.lost[task.task_id] = "missing"
        return
    _, status, value, error, _, _ = row
    if task.fate == "refused":
        result.refused += 1
        if status != "failed" or ran:
            result.unexpected[task.task_id] = f"refused at submission, yet {status}, ran {ran}x"
        return
    result.submitted += 1
    if status not in TERMINAL:
        result.lost[task.task_id] = status
        return
    if ran > 1:
        result.executed_twice[task.task_id] = ran
    if ran == 0:
        result.recorded_twice[task.task_id] = f"{status} but the workflow never ran it"
    if (status, stops) not in {("succeeded", 1), ("failed", 0)}:
        result.recorded_twice[task.task_id] = f"{status} with {stops} StopEvent(s)"
    message = (error or {}).get("message", "")
    if task.kind == "fail":
        if status == "failed" and PLANNED_FAILURE in message:
            result.failed_expected += 1
        else:
            result.unexpected[task.task_id] = f"meant to fail, ended {status}: {message or value}"
    elif status != "succeeded":
        result.unexpected[task.task_id] = f"{task.kind} task {status}: {message}"
    else:
        result.succeeded += 1
        if task.kind != "session" and value != expected_result(task.task_id, task.kind):
            result.unexpected[task.task_id] = f"{task.kind} task's result is {value!r}"


def _sessions(
    planned: list[Planned],
    rows: dict[str, tuple[Any, ...]],
    runs: dict[str, list[Run]],
    result: Account,
) -> None:
    """Each session's tasks ran one at a time, in order, each seeing its predecessors' count."""
    by_session: dict[str, list[Planned]] = collections.defaultdict(list)
    for task in planned:
        if task.session_id is not None and task.task_id in rows:
            by_session[task.session_id].append(task)
    result.sessions = len(by_session)
    for tasks in by_session.values():
        tasks.sort(key=lambda t: t.position)
        succeeded = 0
        previous_end: dt.datetime | None = None
        for task in tasks:
            _, status, value, _, finished_at, _ = rows[task.task_id]
            first = runs.get(task.task_id)
            if first and previous_end is not None and first[0].at < previous_end.timestamp():
                early = previous_end.timestamp() - first[0].at
                result.order_violations[task.task_id] = (
                    f"started {early:.2f} s before the session's previous task ended"
                )
            if status == "succeeded":
                wanted = expected_result(task.task_id, "session", succeeded)
                if value != wanted:
                    seen = result.order_violations.get(task.task_id)
                    wrong = f"result {value!r}, not {wanted!r}"
                    result.order_violations[task.task_id] = f"{seen}; {wrong}" if seen else wrong
                succeeded += 1
            if finished_at is not None:
                previous_end = finished_at


#: Seconds after a fault's target is back during which it may still cause a second run:
#: processes reconnect to a broker that came back, and redeliver what they could not ack.
AFTERMATH = 15.0


def explain(runs: list[Run], faults: list[Fault], worker_pids: dict[int, str]) -> str:
    """The fault that explains a task's second run: the kill of the process that ran the
    first (between the two runs), or else the latest fault under way, or just over, between
    a second before the first run and the second run."""
    first, second = runs[0], runs[1]
    for fault in faults:
        if fault.pid == first.pid and first.at <= fault.at <= second.at:
            return fault.kind
    during = [f for f in faults if f.at <= second.at and f.back + AFTERMATH >= first.at - 1.0]
    if during:
        return max(during, key=lambda f: f.at).kind
    return f"unexplained (first run in {worker_pids.get(first.pid, first.pid)})"


def dump(query: Query, folder: Path) -> None:
    """Write the tables a post-mortem reads (tasks, attempts, workers, events) as JSON lines
    into ``folder``, since the soak drops its database at the end."""
    folder.mkdir(parents=True, exist_ok=True)
    for table in ("tasks", "task_attempts", "workers", "events"):
        rows = query(f"SELECT row_to_json(t)::text FROM {table} t", ())
        (folder / f"{table}.jsonl").write_text("".join(f"{row}\n" for (row,) in rows))


def story(
    task: Planned,
    took: float,
    runs: list[Run],
    attempts: list[list[Any]],
    worker_pids: dict[int, str],
) -> str:
    """A late task's life: its kind, when it ended, its runs and its recorded attempts, in
    seconds after its submission."""

    def since(at: dt.datetime | float | None) -> str:
        if at is None:
            return "-"
        seconds = at.timestamp() if isinstance(at, dt.datetime) else at
        return f"{seconds - task.sent_at:+.1f}"

    ran = ", ".join(f"{since(r.at)} s in {worker_pids.get(r.pid, r.pid)}" for r in runs)
    recorded = ", ".join(
        f"#{n} {worker} {since(start)}..{since(end)} {outcome}"
        for n, worker, start, end, outcome in attempts
    )
    return f"{task.kind}, ended after {took:.1f} s; ran at {ran or 'never'}; attempts {recorded}"


# -- the summary ----------------------------------------------------------------------------------


def summary(result: Account, broker: str, seed: int) -> str:
    """The table printed at the end, with the details of anything that went wrong."""
    twice = collections.Counter(result.twice_because.values())
    rows = [
        ("broker", broker),
        ("seed", str(seed)),
        ("duration", f"{result.duration:.0f} s"),
        ("submitted", str(result.submitted)),
        ("succeeded", str(result.succeeded)),
        ("failed, as planned", str(result.failed_expected)),
        ("failed or wrong, unexpectedly", str(len(result.unexpected))),
        ("lost (never ended, never stored)", str(len(result.lost))),
        ("recorded twice", str(len(result.recorded_twice))),
        ("executed twice (at least once)", f"{len(result.executed_twice)} {_by(twice)}"),
        ("human input answered", f"{result.answered} of {result.asked} asked"),
        ("sessions, order violations", f"{result.sessions}, {len(result.order_violations)}"),
        ("refused at submission (503)", str(result.refused)),
        ("never stored (client gave up)", str(result.never_stored)),
        ("faults injected", f"{sum(result.faults.values())} {_by(result.faults)}"),
        ("API 5xx other than 503", f"{sum(result.api_errors.values())}"),
        ("time to end p50 / max", _times(result.times_to_end)),
        (f"ended over {LATE:g} s after submission", str(len(result.late))),
    ]
    width = max(len(name) for name, _ in rows)
    lines = ["", "soak summary", "-" * (width + 30)]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    lines.append("-" * (width + 30))
    for title, found in (
        ("lost", result.lost),
        ("recorded twice", result.recorded_twice),
        ("unexpected", result.unexpected),
        ("session order", result.order_violations),
        ("executed twice", {k: v for k, v in result.twice_because.items() if "unexplained" in v}),
        ("API errors", dict(result.api_errors)),
        ("late", result.late),
    ):
        for key, why in list(found.items())[:20]:
            lines.append(f"{title}: {key}: {why}")
    lines.append("PASSED" if result.passed() else "FAILED")
    return "\n".join(lines)


def _by(counts: collections.Counter[str]) -> str:
    if not counts:
        return ""
    return "(" + ", ".join(f"{kind} {n}" for kind, n in counts.most_common()) + ")"


def _times(times: list[float]) -> str:
    if not times:
        return "-"
    return f"{statistics.median(times):.1f} s / {max(times):.1f} s"
