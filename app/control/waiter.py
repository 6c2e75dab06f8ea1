"""Wake threads that wait for a task to end, as soon as its outcome is recorded."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


class TaskWaiter:
    """Lets ``tasks/run`` block until a task ends.

    The recorder calls :meth:`notify` after it commits an outcome. When the recorder runs in
    this process (the embedded mode), waiters wake at once; otherwise they fall back to
    re-reading the database with a backoff, so correctness never depends on the notification.
    """

    def __init__(self, first_poll: float = 0.01, max_poll: float = 0.25) -> None:
        self._first_poll = first_poll
        self._max_poll = max_poll
        self._events: dict[str, list[threading.Event]] = defaultdict(list)
        self._lock = threading.Lock()

    def wait(
        self,
        task_id: str,
        timeout: float,
        look: Callable[[], T | None],
        *,
        check_first: bool = True,
    ) -> T | None:
        """Call ``look`` until it returns something, and return that; ``None`` once
        ``timeout`` seconds pass. It is called again on every notify and poll.

        ``check_first=False`` skips the first look, for a task that was only just queued.
        """
        with self.listen(task_id) as event:
            deadline = time.monotonic() + timeout
            delay = self._first_poll
            check = check_first
            while True:
                # Registered before the look, so a notify between look and wait is not missed.
                if check:
                    found = look()
                    if found is not None:
                        return found
                check = True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                event.wait(min(delay, remaining))
                event.clear()
                delay = min(delay * 2, self._max_poll)

    @contextmanager
    def listen(self, task_id: str) -> Iterator[threading.Event]:
        """An event that ``notify(task_id)`` sets, for readers that loop on their own
        (event streams): register, read, then wait on it, and no notify is missed."""
        event = threading.Event()
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

    def notify(self, task_id: str) -> None:
        """Something about the task changed: let its waiters look again."""
        with self._lock:
            waiters = list(self._events.get(task_id, ()))
        for event in waiters:
            event.set()
