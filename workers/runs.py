"""One run of a step on a worker: what it reports, and how it is stopped.

A run reports its start (after a grace period, or with its end), each event its workflow
streams, and its outcome; it may be stopped before its end (its task cancelled, or past its
time limit), and a failed one says when its service's retry policy runs it again.
"""

from __future__ import annotations

import concurrent.futures
import logging
import random
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from workflows.events import InputRequiredEvent, StopEvent

from config.deployment.controls import RetryPolicy
from config.errors import NestedTooDeeply
from config.limits import json_size, nesting_depth
from workers import loader
from workers.errors import ResultTooLarge
from workers.protocol import JournalWritten, RunStep, StepEvent, StepFinished, StepStarted

logger = logging.getLogger(__name__)


class Reporter(Protocol):
    """Where a run's progress goes: the control plane in production, a list in tests."""

    def started(self, message: StepStarted) -> None:
        """A worker took the task."""

    def event(self, message: StepEvent) -> None:
        """The workflow streamed an event."""

    def finished(self, message: StepFinished) -> None:
        """The run ended."""

    def journal(self, message: JournalWritten) -> None:
        """A durable run journaled its progress (see ``workers.durable``)."""


@dataclass(frozen=True)
class ResultBounds:
    """The largest result a run may return (compact JSON bytes), and its deepest nesting."""

    max_bytes: int = 1_048_576
    max_depth: int = 100

    def check(self, result: Any) -> None:
        """ResultTooLarge if the (JSON-safe) result is over either bound."""
        problem = self.problem(result, "the workflow's result", "results")
        if problem is not None:
            raise ResultTooLarge(problem)

    def problem(self, value: Any, what: str, kind: str) -> str | None:
        """Why the JSON-safe ``value`` (``what``, one of ``kind``) is over a bound; None if
        it is within both."""
        if nesting_depth(value, self.max_depth) > self.max_depth:
            return f"{what} is {NestedTooDeeply(self.max_depth)} (CELERIAC_MAX_NESTING)"
        size = json_size(value)
        if size > self.max_bytes:
            return (
                f"{what} is {size:,} bytes of JSON; {kind} may have at most "
                f"{self.max_bytes:,} (CELERIAC_MAX_RESULT_BYTES)"
            )
        return None

    def bounded_event(self, described: dict[str, Any]) -> dict[str, Any]:
        """A streamed event (:func:`describe_event`) as it may be stored and sent on: one
        over the bounds keeps its type, its data replaced by ``{"celeriac_omitted": why}``
        (a stream reader learns what it missed; the run goes on)."""
        what = f"the data of streamed event {described['type']}"
        problem = self.problem(described["data"], what, "streamed events")
        if problem is None:
            return described
        logger.warning("%s; sent without it", problem)
        return {**described, "data": {"celeriac_omitted": problem}}


#: A run still going after this many seconds reports that it started; a shorter one reports
#: start and end in one message, which halves the per-task overhead of quick tasks. Under
#: load quick runs take tens of milliseconds, so the grace is well above that; a run that
#: streams an event reports its start before the event, whatever the grace.
STARTED_GRACE = 0.25

#: Seconds a workflow asked to stop (cancelled, or past its time limit) has to end its run
#: (``handler.cancel_run``: its steps get ``CancelledError`` at their next ``await``) before
#: the worker stops waiting for it, reports it stopped and frees the slot. A step that
#: blocks the event loop without awaiting cannot be interrupted inside the process.
STOP_GRACE = 5.0

#: ``StepFinished.stopped`` of a run stopped at its time limit, or of a step that expired.
TIMED_OUT = "timed_out"


class Run:
    """What one run has reported so far."""

    def __init__(
        self, step: RunStep, worker: str, inbox: str, reporter: Reporter, bounds: ResultBounds
    ) -> None:
        self.step = step
        self.worker = worker
        self.inbox = inbox
        self.reporter = reporter
        self.context: dict[str, Any] | None = None
        self.started_at = time.time()
        self.started_reported = False
        #: The next event's number: a retried task's run goes on after its earlier runs.
        self.count = step.first_seq
        self.held: list[StepEvent] = []
        #: What a streamed event may hold.
        self.bounds = bounds
        #: It streamed an ``InputRequiredEvent`` and no event was delivered to it since.
        self.asking = False
        #: Stopped by ``ServiceRuntime.hand_back``, to run again elsewhere.
        self.handed_back = False
        #: A durable run let go while it waited for input (see ``workers.durable``).
        self.parked = False
        #: For a parked run: when its first wait for an event times out.
        self.wake_at: float | None = None
        #: A durable run's last journal message, sent with the outcome (see ``StepFinished``).
        self.journal: dict[str, Any] | None = None
        #: Resolved with the reason (``cancelled``, ``timed_out``) when the run must stop.
        self.stop_asked: concurrent.futures.Future[str] = concurrent.futures.Future()
        #: Set once the workflow's coroutine has ended, whatever the way.
        self.ended = threading.Event()

    def stop(self, future: concurrent.futures.Future[Any]) -> RunStopped:
        """Ask the workflow to stop (``stop_asked`` holds why), wait up to
        :data:`STOP_GRACE` seconds for it to end, and say how it stopped. From here on the
        run reports no more events: its task has ended."""
        reason = self.stop_asked.result()
        future.cancel()  # the workflow's task gets CancelledError, then ``cancel_run``
        politely = self.ended.wait(STOP_GRACE)
        how = (
            "it stopped when asked"
            if politely
            else (f"it did not stop within {STOP_GRACE:g} s of being asked, and was left behind")
        )
        if reason == TIMED_OUT:
            return RunStopped(
                reason,
                stopped_error(
                    "TimeLimitExceeded",
                    f"the run took longer than its time-limit of {self.step.time_limit:g} s; "
                    + how,
                ),
            )
        return RunStopped(reason, stopped_error("Cancelled", f"the task was {reason}; {how}"))

    def report_started(self) -> None:
        """Tell the control plane the task is running (for runs past the grace period)."""
        if self.started_reported:
            return
        self.started_reported = True
        self.reporter.started(
            StepStarted(
                task_id=self.step.task_id,
                worker=self.worker,
                at=self.started_at,
                inbox=self.inbox,
                run=self.step.run,
            )
        )

    def event(self, event: Any) -> None:
        """Forward a streamed event; the final ``StopEvent`` waits to go with the outcome.

        The start is reported before the first forwarded event, so that whoever sees the event
        (an ``InputRequiredEvent``, say) can already reach this worker.
        """
        message = StepEvent(
            task_id=self.step.task_id,
            seq=self.count,
            event=self.bounds.bounded_event(describe_event(event)),
            at=time.time(),
            run=self.step.run,
        )
        self.count += 1
        if self.stop_asked.done():
            return  # stopped: its task has ended
        if isinstance(event, StopEvent):
            self.held.append(message)
        else:
            self.report_started()
            self.reporter.event(message)
            self.asking = self.asking or isinstance(event, InputRequiredEvent)

    def failed(self, exc: BaseException, *, with_traceback: bool) -> StepFinished:
        """The final report of a run that raised ``exc``: retried later if the service's
        retry policy says so."""
        retry_in = None
        policy = None if self.step.retry is None else RetryPolicy.from_dict(self.step.retry)
        if policy is not None and 0 < self.step.run < policy.attempts:
            names = [f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__]
            if policy.retries(names):
                retry_in = policy.delay(self.step.run, random.random())
        return self.outcome(error=error_of(exc, with_traceback=with_traceback), retry_in=retry_in)

    def outcome(
        self,
        result: Any = None,
        error: dict[str, Any] | None = None,
        *,
        stopped: str | None = None,
        retry_in: float | None = None,
    ) -> StepFinished:
        """The final report."""
        return StepFinished(
            task_id=self.step.task_id,
            ok=error is None,
            result=result,
            error=error,
            event_count=self.count,
            events=[m.encode() for m in self.held],
            worker=self.worker,
            started_at=self.started_at,
            started_reported=self.started_reported,
            at=time.time(),
            context=self.context,
            inbox=self.inbox,
            keep_context=self.step.keep_context,
            run=self.step.run,
            stopped=stopped,
            retry_in=retry_in,
            parked=self.parked,
            wake_at=self.wake_at,
            journal=self.journal,
        )


def describe_event(event: Any) -> dict[str, Any]:
    """A streamed event as JSON: its type, qualified name and fields."""
    cls = type(event)
    data = event.model_dump() if isinstance(event, BaseModel) else event
    if isinstance(data, dict) and isinstance(data.get("_data"), dict):
        # Workflow events keep keyword fields in ``_data``; clients expect them at the top,
        # as LlamaDeploy streamed them (an InputRequiredEvent has ``prefix``).
        data = {**data.pop("_data"), **data}
    return {
        "type": cls.__name__,
        "qualified_name": loader.public_name(f"{cls.__module__}.{cls.__qualname__}"),
        "data": jsonable(data),
        "input_required": isinstance(event, InputRequiredEvent),
    }


def jsonable(value: Any) -> Any:
    """A JSON-safe form of a workflow's value (pydantic models dumped, the rest ``str()``)."""
    return to_jsonable_python(value, fallback=str)


class RunStopped(Exception):
    """A run the worker stopped before its end: ``reason`` (``StepFinished.stopped``), and
    the error to record."""

    def __init__(self, reason: str, error: dict[str, Any]) -> None:
        super().__init__(error["message"])
        self.reason = reason
        self.error = error


def stopped_error(kind: str, message: str) -> dict[str, Any]:
    """The error of a run Celeriac stopped (``celeriac.Cancelled``, ``celeriac.TimeLimitExceeded``,
    ``celeriac.QueueTimeout``)."""
    return {"type": f"celeriac.{kind}", "message": message}


def error_of(exc: BaseException, *, with_traceback: bool) -> dict[str, Any]:
    """An exception as JSON: its type, message and, for user code, the traceback."""
    error: dict[str, Any] = {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc) or type(exc).__name__,
    }
    if with_traceback:
        error["traceback"] = "".join(traceback.format_exception(exc))[-8000:]
    return error
