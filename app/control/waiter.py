"""Wake threads that wait for a task to end, as soon as its outcome is recorded."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple


class Outcome(NamedTuple):
    """How a task ended: what ``tasks/run`` answers with."""

    status: str
    result: Any
    error: dict[str, Any] | None


class _Signal(threading.Event):
    """Set when a task changed; holds its outcome when whoever recorded it passed it on."""

    outcome: Outcome | None = None


#: Seconds between checks that whoever waits for a task is still there.
ABANDONED_CHECK = 0.5


class Abandoned(Exception):
    """Control flow, not an error: whoever waited for the task left, so the wait stopped."""


def _pause(event: threading.Event, seconds: float, abandoned: Callable[[], bool] | None) -> None:
    """Wait up to ``seconds`` for ``event``, asking ``abandoned`` between slices of at most
    ``ABANDONED_CHECK`` seconds; Abandoned once it says yes."""
    if abandoned is None:
        event.wait(seconds)
        return
    end = time.monotonic() + seconds
    while not event.wait(max(0.0, min(ABANDONED_CHECK, end - time.monotonic()))):
        if abandoned():
            raise Abandoned
        if time.monotonic() >= end:
            return


#: Polls while another process's outcomes reach :meth:`TaskWaiter.notify` reliably: only a
#: safety net then.
RELAYED_POLL = (1.0, 5.0)


class TaskWaiter:
    """Lets ``tasks/run`` block until a task ends.

    The recorder calls :meth:`notify` after it commits an outcome. When the recorder runs in
    this process (the embedded mode), waiters wake at once; otherwise they fall back to
    re-reading the database with a backoff, so correctness never depends on the notification.
    While outcomes recorded elsewhere are relayed (PostgreSQL's notifications, see
    :meth:`set_relayed`), that backoff is slow, sparing the database a read per poll. A
    notification may carry the committed outcome itself: the waiter then takes it without
    reading the database.
    """

    def __init__(self, first_poll: float = 0.01, max_poll: float = 0.25) -> None:
        self._own_polls = (first_poll, max_poll)
        self._polls = self._own_polls
        self._events: dict[str, list[_Signal]] = defaultdict(list)
        self._lock = threading.Lock()

    def wait(
        self,
        task_id: str,
        timeout: float,
        look: Callable[[], Outcome | None],
        *,
        check_first: bool = True,
        abandoned: Callable[[], bool] | None = None,
    ) -> Outcome | None:
        """The task's outcome, as soon as a notify passes it on or ``look`` (called at first,
        and again on every other notify and poll) finds it; ``None`` once ``timeout``
        seconds pass.

        ``check_first=False`` skips the first look, for a task that was only just queued.
        ``abandoned`` is asked every ``ABANDONED_CHECK`` seconds at most: once it says the
        one waiting left (an HTTP client that disconnected), :class:`Abandoned` is raised,
        and the thread is free again.
        """
        with self.listen(task_id) as event:
            deadline = time.monotonic() + timeout
            delay = self._polls[0]
            check = check_first
            while True:
                if event.outcome is not None:
                    return event.outcome
                # Registered before the look, so a notify between look and wait is not missed.
                if check:
                    found = look()
                    if found is not None:
                        return found
                check = True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                _pause(event, min(delay, remaining), abandoned)
                event.clear()
                delay = min(delay * 2, self._polls[1])

    @property
    def relayed(self) -> bool:
        """True while outcomes recorded elsewhere reach :meth:`notify`."""
        return self._polls is RELAYED_POLL

    def set_relayed(self, relayed: bool) -> None:
        """Outcomes recorded in other processes now reach :meth:`notify` (``True``), or may
        not (``False``). Polls slow down or speed up accordingly, and every waiter looks
        again at once: outcomes may have been missed before the relay began or after it broke.
        """
        self._polls = RELAYED_POLL if relayed else self._own_polls
        with self._lock:
            waiters = [event for events in self._events.values() for event in events]
        for event in waiters:
            event.set()

    @contextmanager
    def listen(self, task_id: str) -> Iterator[_Signal]:
        """An event that ``notify(task_id)`` sets, for readers that loop on their own
        (event streams): register, read, then wait on it, and no notify is missed."""
        event = _Signal()
        with self._lock:
            self._events[task_id].append(event)
        try:
            yield event
        finally:
            with self._lock:
                waiters = self._events.get(task_id, [])
                if event in waiters:
                    waiters.remove(event)
                if not waiters:
                    self._events.pop(task_id, None)

    def notify(self, task_id: str, outcome: Outcome | None = None) -> None:
        """Something about the task changed: let its waiters look again, or, given the
        ``outcome`` it ended with (committed), let them take it."""
        with self._lock:
            waiters = list(self._events.get(task_id, ()))
        for event in waiters:
            if outcome is not None:
                event.outcome = outcome
            event.set()
