"""The message protocol between the control plane and service workers.

Work crosses processes by task name; every message is a small JSON object with a version
``v`` and an ``id`` that handlers use to stay idempotent under at-least-once delivery.

Naming scheme:

- the control plane consumes the queue ``control_plane``;
- service ``S`` of deployment ``D`` is served from the queue ``celeriac.D.S``;
- each service worker also consumes its inbox ``celeriac.inbox.<worker>``, where events sent
  into the tasks it runs arrive;
- task names are ``celeriac.service.*`` (run by service workers) and ``celeriac.control.*``
  (run by the control-plane consumer).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from workers.errors import ProtocolError

PROTOCOL_VERSION = 1

CONTROL_QUEUE = "control_plane"

RUN_STEP = "celeriac.service.run_step"
STEP_STARTED = "celeriac.control.step_started"
STEP_EVENT = "celeriac.control.step_event"
STEP_FINISHED = "celeriac.control.step_finished"
HEARTBEAT = "celeriac.control.heartbeat"
DESCRIBE = "celeriac.service.describe"
SERVICE_DESCRIBED = "celeriac.control.service_described"
STOPS_WANTED = "celeriac.control.stops_wanted"
JOURNAL_WRITTEN = "celeriac.control.journal_written"
JOURNAL_WANTED = "celeriac.control.journal_wanted"

#: The exchange through which the control plane tells every service worker of the
#: runs it stopped (cancelled, timed out, or of a deleted deployment); each worker binds a
#: queue of its own to it (see ``workers.inbox.stops_entity``).
STOPS_EXCHANGE = "celeriac.stops"


SERVICE_QUEUE_PREFIX = "celeriac."
INBOX_PREFIX = "celeriac.inbox."


def service_queue(deployment: str, service: str) -> str:
    """The queue that serves one service of one deployment."""
    return f"{SERVICE_QUEUE_PREFIX}{deployment}.{service}"


def inbox_queue(worker: str, pid: int) -> str:
    """The queue of one worker process, through which events reach the tasks it runs.

    The process id makes each start's inbox its own, even under a fixed node name: an inbox
    is declared with an expiry (see ``workers.inbox``), and RabbitMQ refuses to declare again
    a queue of the same name with other arguments, such as one left by an earlier release.
    """
    return f"{INBOX_PREFIX}{worker}.{pid}"


#: The one event any workflow may be sent besides its own: a person's answer.
HUMAN_RESPONSE_EVENT = "workflows.events.HumanResponseEvent"
#: LlamaDeploy clients built on llama-index-core name the framework's events by its path.
LEGACY_EVENTS_PREFIX = "llama_index.core.workflow."
_FRAMEWORK_EVENTS_PREFIX = "workflows."


def event_names(qualified_names: Iterable[str]) -> dict[str, str]:
    """Every name a client may give an event a workflow is sent, to its qualified name (as the
    user's folder spells it): the qualified name itself, LlamaDeploy's
    ``llama_index.core.workflow`` spelling of the framework's events, and the bare class name
    where no other of the events has it. The control plane and the worker both name events
    by this, so an event the API accepts is one the worker can decode."""
    qualified = sorted(set(qualified_names))
    names: dict[str, str] = {}
    short = Counter(name.rsplit(".", 1)[-1] for name in qualified)
    for name in qualified:
        names[name] = name
        if name.startswith(_FRAMEWORK_EVENTS_PREFIX):
            names[LEGACY_EVENTS_PREFIX + name.removeprefix(_FRAMEWORK_EVENTS_PREFIX)] = name
        if short[name.rsplit(".", 1)[-1]] == 1:
            names[name.rsplit(".", 1)[-1]] = name
    return names


def new_message_id() -> str:
    """A fresh message id."""
    return uuid.uuid4().hex


M = TypeVar("M", bound="Message")


_FIELD_NAMES: dict[type, frozenset[str]] = {}


def _field_names(cls: type) -> frozenset[str]:
    """A message class's field names, computed once per class (encode is on the hot path)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = frozenset(f.name for f in dataclasses.fields(cls))
    return names


@dataclass(frozen=True)
class Message:
    """Base of every message: JSON-safe fields, a version and an id."""

    id: str = field(default_factory=new_message_id, kw_only=True)
    v: int = field(default=PROTOCOL_VERSION, kw_only=True)

    def summary(self) -> str:
        """A short, readable description for monitoring (Flower shows it as the arguments)."""
        shown = ("deployment", "service", "task_id", "seq", "ok")
        parts = [f"{name}={getattr(self, name)!r}" for name in shown if hasattr(self, name)]
        return ", ".join(parts)

    def encode(self) -> dict[str, Any]:
        """The message as a JSON-safe dict (shallow: fields already hold JSON values)."""
        return {name: getattr(self, name) for name in _field_names(type(self))}

    @classmethod
    def decode(cls: type[M], data: dict[str, Any]) -> M:
        """Rebuild a message from :meth:`encode`'s output; unknown keys are ignored."""
        if not isinstance(data, dict):
            raise ProtocolError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
        version = data.get("v", PROTOCOL_VERSION)
        if version != PROTOCOL_VERSION:
            raise ProtocolError(f"{cls.__name__}: unsupported protocol version {version!r}")
        if not data.get("id"):
            # Handlers deduplicate on the id: a message without one cannot be made safe.
            raise ProtocolError(f"{cls.__name__}: missing message id")
        names = _field_names(cls)
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:
            raise ProtocolError(f"{cls.__name__}: {exc}") from exc


@dataclass(frozen=True)
class RunStep(Message):
    """Control plane to service: run this task's workflow with this input."""

    task_id: str
    #: Empty for a task run on its own.
    session_id: str | None
    deployment: str
    service: str
    input: dict[str, Any]
    #: The deployment's version when the task was sent: a worker holding an older one
    #: fetches the new one first.
    version: int = 1
    #: The session's workflow Context (JSON, as ``Context.to_dict`` gives it), if any.
    context: dict[str, Any] | None = None
    #: Whether to send the Context back at the end (not for single-use sessions).
    keep_context: bool = False
    #: The number of the run's first streamed event: 0, or after a retry the count of the
    #: events that the task's earlier runs streamed.
    first_seq: int = 0
    #: The task's run (1, then one more per retry); every report of the run repeats it.
    #: 0 in a message from before runs were numbered.
    run: int = 0
    #: Seconds the run may take; past them it is stopped and the task times out.
    time_limit: float | None = None
    #: When (a UNIX time, by the control plane's clock) the step expires: a worker that takes
    #: it later does not run it, and the task times out.
    expires_at: float | None = None
    #: The service's retry policy (``config.deployment.controls.RetryPolicy``, in the YAML's
    #: spelling): a failed run says whether, and when, it is tried again.
    retry: dict[str, Any] | None = None
    #: The service is durable: the run journals its progress, and starts from the task's
    #: journal (asked of the control plane with :class:`JournalWanted`).
    durable: bool = False
    #: The run's first message, sent once: a worker that gets it as first delivered (not
    #: put back by the broker) knows the run has no journal yet, and need not ask for one.
    #: Messages sent again (by the outbox, a lease's recovery, an answer to a parked task)
    #: are not.
    fresh: bool = False


@dataclass(frozen=True)
class StepStarted(Message):
    """Service to control plane: a worker began running the task."""

    task_id: str
    worker: str
    at: float
    #: Where events for this task must be sent (the worker's inbox queue).
    inbox: str = ""
    #: The run it began (``RunStep.run``).
    run: int = 0


@dataclass(frozen=True)
class StepEvent(Message):
    """Service to control plane: the workflow wrote event number ``seq`` to its stream."""

    task_id: str
    seq: int
    event: dict[str, Any]
    at: float
    #: The run that streamed it (``RunStep.run``).
    run: int = 0


@dataclass(frozen=True)
class StepFinished(Message):
    """Service to control plane: the run ended, with a result or an error.

    A run that ends quickly sends no :class:`StepStarted` (``started_reported`` is false): this
    message then carries the start too. The run's last events (its ``StopEvent``) travel here
    as ``events`` (encoded :class:`StepEvent`), so they are stored in the same transaction as
    the outcome. ``event_count`` says how many events the run streamed in all, so readers know
    when the stored stream is complete even if this message overtakes earlier events.
    """

    task_id: str
    ok: bool
    result: Any
    error: dict[str, Any] | None
    event_count: int
    events: list[dict[str, Any]]
    worker: str
    started_at: float
    started_reported: bool
    at: float
    #: The session's Context after the run, when the step was asked to keep it.
    context: dict[str, Any] | None = None
    inbox: str = ""
    #: The task belongs to a session that lives on: the control plane hands it on.
    keep_context: bool = False
    #: The run that ended (``RunStep.run``).
    run: int = 0
    #: Why the worker stopped the run before its end, if it did: ``cancelled`` or
    #: ``timed_out`` (its time limit, or a step that expired before it began).
    stopped: str | None = None
    #: Seconds until the failed run is tried again, by the service's retry policy; None if
    #: it is not.
    retry_in: float | None = None
    #: A durable run let go while it waited for input (``workers.durable``): the task still
    #: waits, with no worker; the answer resumes it from its journal.
    parked: bool = False
    #: For a parked run: when (UNIX time) the first of its waits for an event times out
    #: (``ctx.wait_for_event(timeout=...)``); the control plane resumes it then.
    wake_at: float | None = None
    #: A durable run that returned its ``StopEvent``: its last journal message (an encoded
    #: :class:`JournalWritten`, the steps that ended since the one before, without ticks,
    #: which nothing will replay), recorded with the outcome instead of on its own.
    journal: dict[str, Any] | None = None


@dataclass(frozen=True)
class Heartbeat(Message):
    """Worker to control plane: I am alive, consume these queues and run these tasks
    (``gone``: I stopped).

    ``tasks`` renews the lease of each task listed; a task its worker no longer lists (nor
    any other) is recovered once its lease runs out. None, from a worker older than leases,
    renews every task that names the worker.
    """

    worker: str
    host: str
    pid: int
    queues: list[str]
    deployments: list[str]
    started_at: float
    at: float
    gone: bool = False
    tasks: list[str] | None = None


@dataclass(frozen=True)
class StopRuns(Message):
    """Control plane to every service worker (the stops exchange), or to one worker's inbox:
    never start these runs, and stop them if they run.

    ``runs`` holds ``[task_id, run]`` pairs. ``complete`` marks the answer to a worker's
    :class:`StopsWanted`: every run stopped that the control plane still remembers."""

    runs: list[list[Any]]
    reason: str
    complete: bool = False


@dataclass(frozen=True)
class StopsWanted(Message):
    """Service worker to control plane: I (re)connected; send the stopped runs to ``inbox``."""

    inbox: str


@dataclass(frozen=True)
class DeliverEvent(Message):
    """Control plane to a worker's inbox: send this event into the task's running workflow.

    ``event`` is LlamaDeploy's ``event_obj_str``: llama-index's JSON form of the event.
    """

    task_id: str
    seq: int
    event: str


@dataclass(frozen=True)
class Describe(Message):
    """Control plane to a service: describe your workflow (its events' schemas, its graph)."""

    deployment: str
    service: str
    version: int = 1


@dataclass(frozen=True)
class ServiceDescribed(Message):
    """Service to control plane: the workflow's description, or why it could not load."""

    deployment: str
    service: str
    version: int
    #: ``start`` and ``stop`` (JSON schemas), ``events`` (``name``, ``qualified_name``,
    #: ``schema`` each) and ``graph`` (llama-index's WorkflowGraph as JSON).
    description: dict[str, Any] | None
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class JournalWritten(Message):
    """Service to control plane: a durable run's progress since its last such message.

    ``records`` are ``[seq, data]`` pairs, or ``[seq, data, input]`` for a tick that applied
    event number ``input`` sent in: the workflow's ticks as the library journals them
    (``BasicRuntime.journal``), numbered from 0 across every resume of the task, so writing
    one twice changes nothing. ``epoch`` is the attempt's, from its :class:`JournalReplay` (0
    for a run's first message, first delivered): the control plane takes the messages of
    the latest attempt only. ``state`` is the run's ``ctx.store`` after them (None:
    unchanged); ``steps`` the steps that ended (see ``app.control.journal.StepRecord``).
    ``snapshot`` (``Context.to_dict``) stands for every record before its ``journal_seq``:
    those are no longer needed (the journal is compacted)."""

    task_id: str
    run: int
    records: list[list[Any]]
    epoch: int = 0
    #: How many ticks the run had journaled when this was sent: ``state`` and ``waiters``
    #: hold as of then (a message processed late never overwrites newer ones).
    through: int = 0
    state: dict[str, Any] | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    snapshot: dict[str, Any] | None = None
    #: The run's waits for an event that time out (``step``, ``waiter_id``, ``deadline``, a
    #: UNIX time), when they changed (None: unchanged).
    waiters: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class JournalWanted(Message):
    """Service to control plane: a durable run starts; send its task's journal to ``inbox``
    as a :class:`JournalReplay` answering ``id``."""

    task_id: str
    run: int
    inbox: str


@dataclass(frozen=True)
class JournalReplay(Message):
    """Control plane to a worker's inbox: what a durable run resumes from (all empty for a
    task that never ran). ``wanted`` is the :class:`JournalWanted` it answers; ``next_seq``
    the number of the run's next streamed event; ``inputs`` the number of the last event
    sent in that the journal includes (-1: none), so that the worker does not send it
    again; ``pending`` the others, ``[seq, event]`` pairs (``DeliverEvent.event``), which the
    resumed run is sent at once."""

    wanted: str
    task_id: str
    #: The attempt's number, which its journal messages carry (``JournalWritten.epoch``).
    epoch: int
    snapshot: dict[str, Any] | None
    records: list[list[Any]]
    state: dict[str, Any] | None
    inputs: int
    next_seq: int
    pending: list[list[Any]] = field(default_factory=list)
    #: The run's waits that time out (``JournalWritten.waiters``): the library does not arm
    #: their timers again after a restore, so the worker does.
    waiters: list[dict[str, Any]] = field(default_factory=list)
