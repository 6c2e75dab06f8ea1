"""Durable runs: a workflow's journal goes to the control plane, and a run starts from it.

A service marked ``celeriac: {durable: true}`` runs each task as llama-index-workflows lets a
runtime persist it: the control loop is driven by ticks (a step's result, an event added, a
release), and ``BasicRuntime.journal`` yields each tick once it is applied, before the steps
it triggers begin. :class:`Journaling` sends those ticks to the control plane
(:class:`~workers.protocol.JournalWritten`), a message at each step's end; the control plane
stores them, once each whatever the redeliveries (they are numbered). A run of a task that
ran before (its worker was lost, or it was parked) asks for the task's journal first
(:class:`Journals`), and ``BasicRuntime.restore`` rebuilds the run from it: steps that
finished are not run again; a step in flight when the worker was lost runs again from its
top.

A run that waits for input with nothing else to do is let go after ``release_after``
seconds (``TickIdleRelease``: the library ends it cleanly, and its Context then holds all
it needs). The task stays ``waiting_input`` with no worker (parked); the answer resumes it on
whichever worker takes it.

What the library does not journal is sent along: ``ctx.store`` (``state``, when it changed)
and which events sent in the journal includes (``inputs``), so that a resumed run is sent
only the others. Class names in the journal are written with the service's private package
as :data:`SERVICE_PACKAGE`: another worker imports the same code under another name.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workflows import Context, Workflow
from workflows.context.serializers import JsonSerializer
from workflows.events import Event, StepState, StepStateChanged, WorkflowIdleEvent
from workflows.handler import WorkflowHandler
from workflows.plugins.basic import BasicRuntime, JournalRecord
from workflows.runtime.types.step_id import StepId
from workflows.runtime.types.ticks import TickIdleRelease, TickWaiterTimeout

from workers.errors import ControlPlaneUnreachable
from workers.protocol import JournalReplay, JournalWanted, JournalWritten

#: How class names of the service's own code are written in a journal (see the module's doc).
SERVICE_PACKAGE = "$service"

#: Seconds a worker waits for the control plane to send a task's journal.
REPLAY_TIMEOUT = 30.0

#: A running journal longer than this many ticks is compacted: the next message carries a
#: snapshot of the run, and the ticks before it are dropped.
COMPACT_AFTER = 1000


class Journals:
    """Asks the control plane for tasks' journals, and takes its answers from the inbox."""

    def __init__(self, ask: Callable[[JournalWanted], None], timeout: float = REPLAY_TIMEOUT):
        self._ask = ask
        self._timeout = timeout
        self._waiting: dict[str, concurrent.futures.Future[JournalReplay]] = {}
        self._lock = threading.Lock()

    def fetch(self, task_id: str, run: int, inbox: str) -> JournalReplay:
        """The task's journal; :class:`ControlPlaneUnreachable` if no answer comes in time
        (the step then goes back to its queue)."""
        wanted = JournalWanted(task_id=task_id, run=run, inbox=inbox)
        answer: concurrent.futures.Future[JournalReplay] = concurrent.futures.Future()
        with self._lock:
            self._waiting[wanted.id] = answer
        try:
            self._ask(wanted)
            return answer.result(timeout=self._timeout)
        except concurrent.futures.TimeoutError:
            raise ControlPlaneUnreachable(
                f"the control plane sent no journal for task {task_id} within {self._timeout:g} s"
            ) from None
        finally:
            with self._lock:
                self._waiting.pop(wanted.id, None)

    def give_up(self) -> None:
        """The worker stops: runs still waiting for a journal stop waiting (their steps go
        back to the queue, as :class:`ControlPlaneUnreachable` sends them)."""
        with self._lock:
            waiting = list(self._waiting.values())
        for answer in waiting:
            if not answer.done():
                answer.set_exception(
                    ControlPlaneUnreachable("the worker stopped before the journal came")
                )

    def answer(self, replay: JournalReplay) -> None:
        """An answer arrived (in the inbox consumer's thread); one nobody waits for is
        dropped."""
        with self._lock:
            waiting = self._waiting.get(replay.wanted)
        if waiting is not None and not waiting.done():
            waiting.set_result(replay)


def service_package(workflow: Workflow) -> str | None:
    """The private package the worker imported a service's code under, if any."""
    parts = type(workflow).__module__.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 and parts[0].startswith("_celeriac") else None


class Names:
    """Writes class names of the service's package as :data:`SERVICE_PACKAGE`, and back."""

    def __init__(self, package: str | None) -> None:
        self._package = package
        self._private = None if package is None else f'"{package}.'
        self._public = f'"{SERVICE_PACKAGE}.'

    def publish(self, text: str) -> str:
        """JSON text as it is journaled."""
        return text if self._private is None else text.replace(self._private, self._public)

    def public(self, qualified_name: str) -> str:
        """A class's name as the user's folder spells it (``counted.Two``)."""
        if self._package is not None and qualified_name.startswith(self._package + "."):
            return qualified_name[len(self._package) + 1 :]
        return qualified_name

    def localize(self, text: str) -> str:
        """Journaled JSON text as this worker imports its classes."""
        return text if self._private is None else text.replace(self._public, self._private)

    def publish_value(self, value: dict[str, Any]) -> dict[str, Any]:
        """A JSON value as it is journaled."""
        return value if self._private is None else json.loads(self.publish(json.dumps(value)))

    def localize_value(self, value: dict[str, Any]) -> dict[str, Any]:
        """A journaled JSON value as this worker imports its classes."""
        return value if self._private is None else json.loads(self.localize(json.dumps(value)))


def restore(
    workflow: Workflow, replay: JournalReplay, fresh: Context | None, names: Names
) -> Context | None:
    """The run's Context rebuilt from the task's journal; None for a task that never began
    (``fresh``, a session's Context, is then where it starts)."""
    if replay.snapshot is None and not replay.records:
        return None
    runtime = workflow.runtime
    if not isinstance(runtime, BasicRuntime):
        raise TypeError(f"durable runs need llama-index-workflows' BasicRuntime, not {runtime!r}")
    serializer = JsonSerializer()
    snapshot = None if replay.snapshot is None else names.localize_value(replay.snapshot)
    records = [JournalRecord(int(seq), names.localize(str(data))) for seq, data in replay.records]
    ctx = runtime.restore(workflow, snapshot, records, serializer=serializer)
    state = replay.state
    if state is None and snapshot is None and fresh is not None:
        state = fresh.to_dict(serializer=serializer).get("state")
    if state is None:
        return ctx
    document = ctx.to_dict(serializer=serializer)
    document["state"] = names.localize_value(state)
    return Context.from_dict(workflow, document, serializer=serializer)


@dataclass
class _Sent:
    """An event sent in (number ``seq``), until the journal shows the run took it."""

    seq: int
    qualified_name: str


class Journaling:
    """Forwards one durable run's journal to the control plane, and parks it when idle."""

    def __init__(
        self,
        task_id: str,
        run: int,
        send: Callable[[JournalWritten], None],
        names: Names,
        release_after: float | None,
        waiters: list[dict[str, Any]] | None = None,
        *,
        epoch: int = 0,
        stop_event: type | None = None,
    ) -> None:
        self.task_id = task_id
        self.run = run
        self.epoch = epoch
        self._send = send
        self._names = names
        self._release_after = release_after
        self._pending: list[list[Any]] = []
        self._steps: list[dict[str, Any]] = []
        self._started: dict[tuple[str, str], float] = {}
        self._sent_in: deque[_Sent] = deque()
        self._state_text: str | None = None
        self._since_snapshot = 0
        self._through = 0
        self._park: asyncio.TimerHandle | None = None
        #: The run's waits for an event that time out, by (step, waiter id): their deadline.
        self._waiters: dict[tuple[str, str], float] = {
            (str(w["step"]), str(w["waiter_id"])): float(w["deadline"]) for w in waiters or ()
        }
        self._waiters_changed = False
        #: Ticks sent on the run's queue (a release, a wait's timeout), kept until sent.
        self._sending: set[asyncio.Future[None]] = set()
        self._armed: list[asyncio.TimerHandle] = []
        #: Set once the run was let go for being idle (parked).
        self.released = False
        #: The workflow's ``StopEvent`` class as ticks name it, and whether a step returned
        #: it: the run then ends, and its last steps travel with its outcome (:meth:`last`).
        self._stop_name = (
            None if stop_event is None else f"{stop_event.__module__}.{stop_event.__qualname__}"
        )
        self.stopping = False

    # -- the journal --------------------------------------------------------------------------

    async def pump(self, runtime: BasicRuntime, handler: WorkflowHandler) -> None:
        """Send the run's ticks as they are applied, a message at each step's end (and
        any left at the run's end), but for the step that returned the ``StopEvent``: the run
        ends with it, and its outcome carries that step (:meth:`last`)."""
        ctx = handler.ctx
        async for record in runtime.journal(handler.run_id):
            ends_step = self._take(record)
            if ends_step and ctx is not None and not self.stopping:
                self.flush(ctx)
        if ctx is not None and not self.stopping:
            self.flush(ctx)

    def last(self) -> JournalWritten | None:
        """The message that goes with the outcome of a run that returned its ``StopEvent``:
        the steps that ended since the last message. Its ticks are left out: a task that
        ended is never resumed (if the outcome is lost, its run is redelivered and resumes
        before the last step, which runs again as the step in flight would)."""
        if not self.stopping or not self._steps:
            return None
        message = JournalWritten(
            task_id=self.task_id,
            run=self.run,
            records=[],
            epoch=self.epoch,
            through=self._through,
            steps=self._steps,
        )
        self._pending, self._steps = [], []
        return message

    def _take(self, record: JournalRecord) -> bool:
        """Keep one tick; True if it ends a step."""
        data = record.data
        self._pending.append([record.seq, self._names.publish(data)])
        self._through = record.seq + 1
        self._since_snapshot += 1
        # Most ticks need no reading: a step's result and an event sent in do.
        ends_step = '"type": "step_result"' in data
        if not ends_step and not (self._sent_in and '"type": "add_event"' in data):
            return False
        tick = json.loads(data)["value"]
        if tick.get("type") == "step_result":
            self._steps.append(self._step_of(record.seq, tick))
            self._note_waiters(tick)
            self.stopping = self.stopping or self._returns_stop(tick)
            return True
        if tick.get("type") == "add_event" and self._sent_in:
            self._match_input(tick, self._pending[-1])
        return False

    def _returns_stop(self, tick: dict[str, Any]) -> bool:
        """Whether a ``step_result`` tick is of a step that returned the ``StopEvent``."""
        for result in tick.get("result") or []:
            returned = result.get("result") if result.get("type") == "result" else None
            if isinstance(returned, dict) and returned.get("qualified_name") == self._stop_name:
                return True
        return False

    def _match_input(self, tick: dict[str, Any], record: list[Any]) -> None:
        """Note on its record the event sent in that an ``add_event`` tick applied, if it
        is one."""
        if tick.get("step_id") is not None or tick.get("emission") is not None:
            return
        name = (tick.get("event") or {}).get("qualified_name")
        if name == self._sent_in[0].qualified_name:
            record.append(self._sent_in.popleft().seq)

    def _note_waiters(self, tick: dict[str, Any]) -> None:
        """Keep the deadlines of the waits a step began (``wait_for_event(timeout=...)``)
        and drop those it ended."""
        step = str(tick["step_id"])
        for result in tick.get("result") or []:
            key = (step, str(result.get("waiter_id")))
            if result.get("type") == "add_waiter" and result.get("timeout") is not None:
                ended = float(tick.get("stamped_at") or time.time())
                self._waiters.setdefault(key, ended + float(result["timeout"]))
                self._waiters_changed = True
            elif result.get("type") == "delete_waiter" and key in self._waiters:
                del self._waiters[key]
                self._waiters_changed = True

    @property
    def wake_at(self) -> float | None:
        """When the first of the run's waits times out, if one does."""
        return min(self._waiters.values(), default=None)

    def rearm(self, workflow: Workflow, handler: WorkflowHandler) -> None:
        """Arm again the timers of the waits a restored run had (the library does not):
        each fires at its deadline, at once if that has passed."""
        loop = asyncio.get_running_loop()
        adapter = workflow.runtime.get_external_adapter(handler.run_id)

        def fire(tick: TickWaiterTimeout) -> None:
            self._send_tick(adapter, tick)

        for (step, waiter_id), deadline in self._waiters.items():
            tick = TickWaiterTimeout(step_id=StepId.from_str(step), waiter_id=waiter_id)
            self._armed.append(loop.call_later(max(deadline - time.time(), 0.0), fire, tick))

    def close(self) -> None:
        """The run ended: its timers go with it."""
        self._cancel_park()
        for handle in self._armed:
            handle.cancel()

    def _step_of(self, seq: int, tick: dict[str, Any]) -> dict[str, Any]:
        """What the control plane lists of a step that ended (see ``StepRecord`` there)."""
        step = str(tick["step_id"])
        ended = tick.get("stamped_at") or time.time()
        started = self._started.pop((step, str(tick.get("worker_id"))), None)
        return {
            "seq": seq,
            "step": step,
            "started_at": started,
            "ended_at": ended,
            "outcome": _outcome(tick.get("result") or []),
            "input": self._names.public(str((tick.get("event") or {}).get("qualified_name", ""))),
            "input_key": json.dumps(tick.get("event"), sort_keys=True),
        }

    def flush(self, ctx: Context, *, snapshot: dict[str, Any] | None = None) -> None:
        """Send what the run journaled since the last message, with ``ctx.store`` if it
        changed; compact the journal when it grew long (or with the ``snapshot`` given)."""
        serializer = JsonSerializer()
        state_text = json.dumps(ctx.store.to_dict(serializer), sort_keys=True)
        state = None
        if state_text != self._state_text:
            self._state_text = state_text
            state = self._names.publish_value(json.loads(state_text))
        if snapshot is None and self._since_snapshot >= COMPACT_AFTER:
            snapshot = ctx.to_dict(serializer=serializer)
        if snapshot is not None:
            snapshot = self._names.publish_value(snapshot)
            self._since_snapshot = 0
        waiters = None
        if self._waiters_changed:
            self._waiters_changed = False
            waiters = [
                {"step": step, "waiter_id": waiter_id, "deadline": deadline}
                for (step, waiter_id), deadline in sorted(self._waiters.items())
            ]
        if not (self._pending or state or snapshot or self._steps or waiters is not None):
            return
        message = JournalWritten(
            task_id=self.task_id,
            run=self.run,
            records=self._pending,
            epoch=self.epoch,
            through=self._through,
            state=state,
            steps=self._steps,
            snapshot=snapshot,
            waiters=waiters,
        )
        self._pending, self._steps = [], []
        self._send(message)

    # -- what the run shows -------------------------------------------------------------------

    def sent_in(self, seq: int, event: Event) -> None:
        """An event sent in (``seq``) is handed to the run: it is no longer idle."""
        cls = type(event)
        self._sent_in.append(_Sent(seq, f"{cls.__module__}.{cls.__qualname__}"))
        self._cancel_park()

    def streamed(self, event: Event, workflow: Workflow, handler: WorkflowHandler) -> bool:
        """Note an event of the run's stream; True for the library's own (internal) events,
        which are not forwarded."""
        if isinstance(event, StepStateChanged):
            if event.step_state == StepState.RUNNING:
                self._cancel_park()
                self._started[(event.name, event.worker_id)] = time.time()
            return True
        if isinstance(event, WorkflowIdleEvent):
            self._schedule_park(workflow, handler)
            return True
        return False

    def _schedule_park(self, workflow: Workflow, handler: WorkflowHandler) -> None:
        if self._release_after is None:
            return
        self._cancel_park()
        loop = asyncio.get_running_loop()
        self._park = loop.call_later(self._release_after, self._release, workflow, handler)

    def _cancel_park(self) -> None:
        if self._park is not None:
            self._park.cancel()
            self._park = None

    def _release(self, workflow: Workflow, handler: WorkflowHandler) -> None:
        self._park = None
        self.released = True
        self._send_tick(workflow.runtime.get_external_adapter(handler.run_id), TickIdleRelease())

    def _send_tick(self, adapter: Any, tick: TickIdleRelease | TickWaiterTimeout) -> None:
        sending = asyncio.ensure_future(adapter.send_event(tick))
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)


def _outcome(results: list[dict[str, Any]]) -> str:
    """How a step ended, from its ``step_result`` tick: the event it returned, its error, or
    what it waits for."""
    for result in results:
        kind = result.get("type")
        if kind == "failed":
            exception = result.get("exception") or {}
            name = exception.get("exception_type") or exception.get("type") or "an error"
            return f"failed: {str(name).rsplit('.', 1)[-1]}"
        if kind == "result":
            returned = result.get("result")
            if not isinstance(returned, dict):
                return "returned nothing"
            name = str(returned.get("qualified_name", "an event"))
            return f"returned {name.rsplit('.', 1)[-1]}"
        if kind == "add_waiter":
            waited = (result.get("waiter_event") or {}).get("qualified_name") or "an event"
            return f"waits for input ({str(waited).rsplit('.', 1)[-1]})"
        if kind == "add_collected":
            return "collected its event"
    return "ended"
