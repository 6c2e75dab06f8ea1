"""Tests of the task waiter that lets ``tasks/run`` block until a task ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from app.control.waiter import Outcome, TaskWaiter

#: What ``look`` returns once the task it waits for has ended.
ENDED = "ended"

#: A poll interval far longer than any wake-up these tests accept.
SLOW_POLL = 5.0


def later(delay: float, action: Callable[[], None]) -> threading.Thread:
    """Run ``action`` in another thread after ``delay`` seconds."""

    def run() -> None:
        time.sleep(delay)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_wait_returns_at_once_when_the_task_is_already_done() -> None:
    waiter = TaskWaiter(first_poll=SLOW_POLL, max_poll=SLOW_POLL)
    start = time.monotonic()
    assert waiter.wait("t-1", timeout=10, look=lambda: ENDED) == ENDED
    assert time.monotonic() - start < 0.05


def test_notify_from_another_thread_wakes_the_waiter_well_before_its_poll() -> None:
    # Given a waiter whose polls are seconds apart, and a task that ends in another thread
    waiter = TaskWaiter(first_poll=SLOW_POLL, max_poll=SLOW_POLL)
    done = threading.Event()
    notified_at: list[float] = []

    def finish() -> None:
        done.set()
        notified_at.append(time.monotonic())
        waiter.notify("t-1")

    # When the task ends and notifies shortly after the wait began
    thread = later(0.05, finish)
    result = waiter.wait("t-1", timeout=10, look=lambda: ENDED if done.is_set() else None)
    woke_at = time.monotonic()
    thread.join(5)
    # Then the waiter woke at once, not at its next poll
    assert result == ENDED
    assert woke_at - notified_at[0] < 0.1


def test_an_outcome_passed_on_by_notify_is_taken_without_a_look() -> None:
    waiter = TaskWaiter(first_poll=SLOW_POLL, max_poll=SLOW_POLL)
    outcome = Outcome("succeeded", {"answer": 42}, None)
    looks: list[float] = []

    def look() -> None:
        looks.append(time.monotonic())

    thread = later(0.02, lambda: waiter.notify("t-1", outcome))
    start = time.monotonic()
    assert waiter.wait("t-1", timeout=10, look=look, check_first=False) == outcome
    assert time.monotonic() - start < 1.0
    assert looks == []
    thread.join(5)


def test_notify_of_another_task_does_not_end_the_wait() -> None:
    waiter = TaskWaiter(first_poll=SLOW_POLL, max_poll=SLOW_POLL)
    thread = later(0.02, lambda: waiter.notify("other-task"))
    start = time.monotonic()
    assert waiter.wait("t-1", timeout=0.2, look=lambda: None) is None
    assert time.monotonic() - start >= 0.2
    thread.join(5)


def test_wait_returns_false_after_the_timeout() -> None:
    waiter = TaskWaiter(first_poll=0.01, max_poll=0.05)
    start = time.monotonic()
    assert waiter.wait("t-1", timeout=0.15, look=lambda: None) is None
    elapsed = time.monotonic() - start
    assert 0.15 <= elapsed < 1.0


def test_wait_looks_again_without_any_notify() -> None:
    # Given a task whose end is recorded elsewhere (another process), so no notify comes
    waiter = TaskWaiter(first_poll=0.01, max_poll=0.02)
    done = threading.Event()
    checks: list[float] = []

    def look() -> str | None:
        checks.append(time.monotonic())
        return ENDED if done.is_set() else None

    # When it ends a little after the wait began
    thread = later(0.05, done.set)
    start = time.monotonic()
    result = waiter.wait("t-1", timeout=5, look=look)
    elapsed = time.monotonic() - start
    thread.join(5)
    # Then the waiter noticed by polling, soon after, having looked several times
    assert result == ENDED
    assert elapsed < 0.5
    assert len(checks) >= 3


def test_notify_wakes_every_waiter_of_the_task() -> None:
    waiter = TaskWaiter(first_poll=SLOW_POLL, max_poll=SLOW_POLL)
    done = threading.Event()
    results: list[str | None] = []
    lock = threading.Lock()

    def wait() -> None:
        outcome = waiter.wait("t-1", timeout=10, look=lambda: ENDED if done.is_set() else None)
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=wait, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)  # let them all start waiting
    start = time.monotonic()
    done.set()
    waiter.notify("t-1")
    for thread in threads:
        thread.join(5)
    assert results == [ENDED] * 3
    assert time.monotonic() - start < 0.5


def test_notify_without_waiters_is_harmless() -> None:
    waiter = TaskWaiter()
    waiter.notify("nobody-waits")
    assert waiter.wait("nobody-waits", timeout=0.01, look=lambda: ENDED) == ENDED


def test_while_relayed_waiters_poll_rarely_and_a_notify_still_wakes_them_at_once() -> None:
    # Given a waiter with quick polls, whose notifications are relayed from elsewhere
    waiter = TaskWaiter(first_poll=0.01, max_poll=0.02)
    waiter.set_relayed(True)
    looks: list[float] = []
    done = threading.Event()

    def look() -> str | None:
        looks.append(time.monotonic())
        return ENDED if done.is_set() else None

    def finish() -> None:
        done.set()
        waiter.notify("t-1")

    # When the task ends, and notifies, after a while
    start = time.monotonic()
    thread = later(0.3, finish)
    result = waiter.wait("t-1", timeout=5, look=look, check_first=False)
    thread.join(5)
    # Then it did not poll meanwhile (quick polls would have looked a dozen times), and woke
    assert result == ENDED
    assert len(looks) == 1
    assert looks[0] - start >= 0.3
    assert waiter.relayed is True


def test_a_change_of_relay_makes_every_waiter_look_again_at_once() -> None:
    # Given waiters that poll rarely because notifications are relayed
    waiter = TaskWaiter(first_poll=0.01, max_poll=0.02)
    waiter.set_relayed(True)
    done = threading.Event()
    results: list[str | None] = []

    def wait(task_id: str) -> None:
        results.append(waiter.wait(task_id, 10, lambda: ENDED if done.is_set() else None))

    threads = [threading.Thread(target=wait, args=(f"t-{n}",), daemon=True) for n in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    # When their tasks ended unheard, and then the relay breaks
    done.set()
    start = time.monotonic()
    waiter.set_relayed(False)
    for thread in threads:
        thread.join(5)
    # Then every waiter looked again at once and found its task ended
    assert results == [ENDED] * 3
    assert time.monotonic() - start < 0.5
    assert waiter.relayed is False
