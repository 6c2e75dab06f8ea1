"""Whether this process can reach its database and its broker, answered within a deadline.

A readiness probe must answer quickly even when what it checks hangs: a database whose
server froze keeps a connecting client waiting for seconds (libpq's ``connect_timeout``,
then ``Database``'s deadline on each answer). So each check runs in a thread of its own and
the probe waits for it no longer than its deadline; a check still running past it is
reported as not answering, and goes on until its driver gives up. A probe that comes while
a check is still running waits for that same check instead of starting another: however
often probes come, each check has at most one thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from celery import Celery
from sqlalchemy import text

from app.db import Database
from config.settings import without_password

#: Seconds a probe waits for its checks: probes answer within about one second.
DEADLINE = 0.8
#: Longest reason given for a failed check.
_REASON_CHARS = 300


@dataclass(frozen=True)
class CheckResult:
    """What one check found."""

    name: str
    ok: bool
    #: Seconds the check took, or has been running when the probe stopped waiting.
    seconds: float
    #: Why it failed (None when ``ok``).
    reason: str | None = None


class _Run:
    """One run of a check, in its own thread."""

    def __init__(self, probe: Callable[[], None]) -> None:
        self.began = time.monotonic()
        self.ended: float | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._probe = probe

    def __call__(self) -> None:
        try:
            self._probe()
        except BaseException as exc:  # whatever the driver raises is the answer
            self.error = exc
        finally:
            self.ended = time.monotonic()
            self.done.set()


class Check:
    """A named check of one dependency, with at most one run at a time."""

    def __init__(self, name: str, probe: Callable[[], None]) -> None:
        self.name = name
        self._probe = probe
        self._lock = threading.Lock()
        self._current: _Run | None = None

    def start(self) -> _Run:
        """The run in progress, or a new one started now."""
        with self._lock:
            run = self._current
            if run is None or run.done.is_set():
                run = self._current = _Run(self._probe)
                threading.Thread(
                    target=run, name=f"celeriac-check-{self.name}", daemon=True
                ).start()
            return run

    def result(self, run: _Run, deadline: float) -> CheckResult:
        """Wait for ``run`` until ``deadline`` (a ``time.monotonic()`` instant); its result."""
        finished = run.done.wait(max(0.0, deadline - time.monotonic()))
        if not finished or run.ended is None:
            waited = time.monotonic() - run.began
            return CheckResult(self.name, False, waited, f"no answer after {waited:.1f} s")
        seconds = run.ended - run.began
        if run.error is None:
            return CheckResult(self.name, True, seconds)
        return CheckResult(self.name, False, seconds, _reason(run.error))


class Readiness:
    """The checks of this process's database and broker, run side by side."""

    def __init__(self, db: Database, celery: Celery, deadline: float = DEADLINE) -> None:
        self.deadline = deadline
        self.checks = (
            Check("database", lambda: _ping_database(db)),
            Check("broker", lambda: _ping_broker(celery)),
        )

    def warm(self) -> None:
        """Start every check without waiting for it (the first ones load drivers)."""
        for check in self.checks:
            check.start()

    def check(self) -> list[CheckResult]:
        """Every check's result, within the deadline."""
        until = time.monotonic() + self.deadline
        runs = [(check, check.start()) for check in self.checks]
        return [check.result(run, until) for check, run in runs]


def _ping_database(db: Database) -> None:
    """One round trip to the database, on a pooled connection (a new one if none is)."""
    with db.peek() as connection:
        connection.execute(text("SELECT 1"))


def _ping_broker(celery: Celery) -> None:
    """A new connection to the broker: a pooled one that is open says nothing of now.
    (Redis's transport sends a PING as it opens its channel.)"""
    with celery.connection_for_write() as connection:
        connection.connect()
        connection.default_channel  # noqa: B018 (opening the channel is the check)


def _reason(error: BaseException) -> str:
    """The first line of an error, after its type, within a bound (and without a URL's
    password, should a driver name its URL)."""
    lines = without_password(str(error)).strip().splitlines()
    first = lines[0] if lines else ""
    reason = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return reason if len(reason) <= _REASON_CHARS else reason[: _REASON_CHARS - 1] + "…"
