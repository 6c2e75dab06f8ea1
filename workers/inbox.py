"""Events sent into running workflows (human in the loop), delivered on the worker's loop.

The control plane sends each event to the inbox queue of the worker process that runs the task
(``celeriac.inbox.<worker>.<pid>``). An event may arrive before the run registered its Context
(it is then held until it does) and more than once (at-least-once delivery: the event's
sequence number makes the second copy a no-op).

An inbox lives as long as its worker: the worker deletes it when it stops (but on SQS), and
RabbitMQ deletes the inbox of a worker that died once it has had no consumer for
``INBOX_EXPIRES``. Events the control plane sends to an inbox that is gone are dropped, and
nothing is lost with them: the task they were for runs again on another worker, and the
control plane sends that worker every event the task was sent, as soon as it reports the
start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from celery import bootsteps
from kombu import Consumer, Queue
from kombu.common import ignore_errors
from workflows import Context, Workflow
from workflows.context.serializers import JsonSerializer
from workflows.events import HumanResponseEvent

from workers import loader
from workers.protocol import (
    CONTROL_QUEUE,
    INBOX_PREFIX,
    SERVICE_QUEUE_PREFIX,
    STOPS_EXCHANGE,
    STOPS_WANTED,
    DeliverEvent,
    JournalReplay,
    StopRuns,
    StopsWanted,
    event_names,
)
from workers.stops import STOPS_ROUTING_KEY, stops_exchange

log = logging.getLogger(__name__)

#: Seconds an inbox outlives its last consumer on RabbitMQ (``x-expires``). Nothing needs an
#: inbox once its worker lost the broker: RabbitMQ then puts the worker's unfinished steps
#: back in their queues, for other workers to start again. A constant, not a setting: the
#: declarations of one name must agree. (Kombu's Redis transport has no expiry: there the
#: deletion by a stopping worker is what cleans up.)
INBOX_EXPIRES = 600.0

#: Transports on which a stopping worker leaves its inbox. Kombu's SQS senders keep the URL of
#: each queue they sent to, and a message sent to a deleted SQS queue is an error, not a drop.
_INBOXES_KEPT = frozenset({"sqs"})


class EventTypes:
    """The event classes one workflow may be sent: the events its steps declare, and a
    person's answer (``HumanResponseEvent``), by every name a client may give them (see
    ``workers.protocol.event_names``; the control plane refuses any other name with 422). No
    other class is ever looked up, and nothing is imported: a client never names a class for
    the worker to load."""

    def __init__(self, workflow: Workflow | None = None) -> None:
        classes = {HumanResponseEvent, *(workflow.events if workflow is not None else ())}
        self._serializer = JsonSerializer(allowed_types=classes)
        serialized = {
            loader.public_name(f"{cls.__module__}.{cls.__qualname__}"): (
                f"{cls.__module__}.{cls.__qualname__}"
            )
            for cls in classes
        }
        self._names = {name: serialized[public] for name, public in event_names(serialized).items()}
        # The private module path the worker imported the class under is a name too.
        self._names.update({private: private for private in serialized.values()})

    def decode(self, text: str) -> Any:
        """The event that ``text`` (llama-index's JSON of an event) stands for; ValueError if
        it is not JSON of an event, or names a class this workflow is not sent."""
        document = json.loads(text)
        name = document.get("qualified_name") if isinstance(document, dict) else None
        if not isinstance(name, str) or name not in self._names:
            raise ValueError(f"{name!r} is not an event this workflow takes")
        document["qualified_name"] = self._names[name]
        # Always an event: without the marker, llama-index would hand the dict on as is.
        document["__is_pydantic"] = True
        return self._serializer.deserialize_value(document)


class Inbox:
    """Running contexts by task id, and the events waiting for them (as sent, in JSON)."""

    def __init__(self) -> None:
        self._running: dict[str, _Running] = {}
        self._waiting: dict[str, list[tuple[int, str]]] = {}
        self._seen: dict[str, set[int]] = {}
        self._floor: dict[str, int] = {}
        #: Workers of this process reading the inbox queue (embedded mode runs several).
        self._readers = 0
        self._lock = threading.Lock()

    def reader_started(self) -> None:
        """A worker of this process began reading the inbox queue."""
        with self._lock:
            self._readers += 1

    def reader_stopped(self) -> bool:
        """A worker stopped reading it for good; True if it was the last (the queue may go:
        a reloaded embedded deployment's new worker reads the same queue as the old one)."""
        with self._lock:
            self._readers = max(self._readers - 1, 0)
            return self._readers == 0

    def attach(
        self,
        task_id: str,
        ctx: Context,
        loop: asyncio.AbstractEventLoop,
        types: EventTypes | None = None,
        *,
        floor: int = -1,
        sent_in: Callable[[int, Any], None] | None = None,
    ) -> None:
        """A run began: deliver what arrived early, and what arrives from now on, decoded
        into ``types`` (the run's workflow's events; the framework's alone if not given).

        A run restored from its journal already took the events numbered up to ``floor``:
        those are not delivered again. ``sent_in`` is told of each event handed to the run
        (its number and the event), on the run's loop."""
        running = _Running(ctx, loop, types or EventTypes(), sent_in)
        with self._lock:
            self._running[task_id] = running
            self._floor[task_id] = floor
            early = [(seq, text) for seq, text in self._waiting.pop(task_id, []) if seq > floor]
        for seq, text in early:
            running.send(seq, text)

    def detach(self, task_id: str) -> None:
        """The run ended."""
        with self._lock:
            self._running.pop(task_id, None)
            self._waiting.pop(task_id, None)
            self._seen.pop(task_id, None)
            self._floor.pop(task_id, None)

    def deliver(self, task_id: str, seq: int, text: str) -> bool:
        """Send an event (its JSON) into the task's run; False if it was a duplicate."""
        with self._lock:
            seen = self._seen.setdefault(task_id, set())
            if seq in seen or seq <= self._floor.get(task_id, -1):
                return False
            seen.add(seq)
            running = self._running.get(task_id)
            if running is None:
                self._waiting.setdefault(task_id, []).append((seq, text))
                return True
        running.send(seq, text)
        return True


class _Running:
    """A run's Context, the loop it runs on, and the events its workflow may be sent."""

    def __init__(
        self,
        ctx: Context,
        loop: asyncio.AbstractEventLoop,
        types: EventTypes,
        sent_in: Callable[[int, Any], None] | None = None,
    ):
        self.ctx = ctx
        self.loop = loop
        self.types = types
        self.sent_in = sent_in

    def send(self, seq: int, text: str) -> None:
        """Decode event number ``seq`` for this run and hand it to the workflow on its
        loop."""
        try:
            event = self.types.decode(text)
        except Exception:
            log.exception("could not decode an event sent to a task")
            return
        self.loop.call_soon_threadsafe(self._hand, seq, event)

    def _hand(self, seq: int, event: Any) -> None:
        if self.sent_in is not None:
            self.sent_in(seq, event)
        self.ctx.send_event(event)


class InboxStep(bootsteps.ConsumerStep):
    """A service worker's inbox, consumed in the consumer's own thread, not the task pool.

    Events for a task must get through even when every pool thread runs a task that waits
    for one (a worker full of workflows waiting for humans): so they are plain Kombu
    messages, handled as they arrive, never queued behind tasks. The same holds for the
    control plane's word to stop a run (``StopRuns``): the inbox is also bound to the stops
    exchange, and on each (re)connection the worker asks for the whole list of stopped runs
    (see ``workers.stops``). The control-plane worker (which consumes no service queue) has
    no inbox.
    """

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        #: Counted among the inbox's readers (see ``Inbox.reader_started``).
        self._reading = False

    def get_consumers(self, channel: Any) -> list[Consumer]:
        """A Kombu consumer of this worker's inbox queue, if it serves any service."""
        consumer = self.consumer
        runtime = consumer.app.runtime
        if runtime.worker_name is None:
            runtime.worker_name = consumer.hostname
        names = [q.name for q in consumer.task_consumer.queues]
        if not any(
            n.startswith(SERVICE_QUEUE_PREFIX) and not n.startswith(INBOX_PREFIX) for n in names
        ):
            return []
        queues = [inbox_entity(runtime.inbox_queue), stops_entity(runtime.inbox_queue)]
        return [Consumer(channel, queues=queues, callbacks=[self._on_message], accept=["json"])]

    def start(self, c: Any) -> None:
        """Remember the worker's consumer, start consuming, then ask for the stopped runs:
        broadcasts sent while the worker was not bound may have been missed."""
        self.consumer = c
        runtime = c.app.runtime
        runtime.stops.unknown()
        super().start(c)
        if not self.consumers:
            runtime.stops.note((), "", complete=True)  # no inbox: it runs no steps
            return
        if not self._reading:  # its first start, not a reconnection
            self._reading = True
            runtime.inbox.reader_started()
        c.app.send_task(
            STOPS_WANTED,
            kwargs=StopsWanted(inbox=runtime.inbox_queue).encode(),
            queue=CONTROL_QUEUE,
            argsrepr="()",
            kwargsrepr=f"inbox={runtime.inbox_queue!r}",
        )

    def shutdown(self, c: Any) -> None:
        """The worker stops for good (not a reconnection): delete its inbox (unless another
        worker of this process still reads it), then close.

        The tasks it did not finish run again on other workers, and the control plane sends
        their events to those workers' inboxes.
        """
        connection = c.connection
        last = self._reading and c.app.runtime.inbox.reader_stopped()
        self._reading = False
        kept = connection is None or connection.transport.driver_type in _INBOXES_KEPT
        if last and not kept:
            for consumer in self.consumers or []:
                for queue in consumer.queues:
                    ignore_errors(connection, _delete, queue, connection)
        super().shutdown(c)

    def _on_message(self, body: Any, message: Any) -> None:
        runtime = self.consumer.app.runtime
        try:
            if isinstance(body, dict) and "runs" in body:
                stopped = runtime.stop_runs(StopRuns.decode(body))
                if stopped:
                    log.warning("stopping %d run(s): their tasks were %s", stopped, body["reason"])
            elif isinstance(body, dict) and "wanted" in body:
                if runtime.journals is not None:
                    runtime.journals.answer(JournalReplay.decode(body))
            else:
                runtime.deliver(DeliverEvent.decode(body))
        except Exception:
            log.exception("could not handle a message of the inbox")
        finally:
            message.ack()


class HandBackStep(bootsteps.StartStopStep):
    """As a worker stops, hands back the runs waiting for input (``ServiceRuntime.hand_back``).

    The worker's consumer, inbox included, has stopped by then, and Celery's warm shutdown
    waits for the tasks in progress: a run waiting for a human would hold the worker until its
    timeout, then fail; so would a run waiting for the list of stopped runs, which its inbox
    no longer takes. This step stops before the pool does (it starts after it).
    """

    requires = ("celery.worker.components:Pool",)

    def stop(self, worker: Any) -> None:
        stopped = worker.app.runtime.hand_back()
        if stopped:
            log.warning("%d task(s) waiting for input go back to their queue", stopped)


def _delete(queue: Queue, connection: Any) -> None:
    bound = queue(connection.default_channel)
    # Kombu's Redis transport deletes a queue's messages through its bindings, and an inbox,
    # on the default exchange, has none: emptying it is what removes the events left in it.
    bound.purge()
    bound.delete()


def inbox_entity(name: str) -> Queue:
    """The Kombu queue of a worker's inbox, on the default exchange (senders publish to it by
    name, without declaring anything), expiring once its worker is gone."""
    return Queue(name, routing_key=name, expires=INBOX_EXPIRES)


def stops_entity(inbox: str) -> Queue:
    """The queue through which the worker of ``inbox`` hears the stops broadcast, bound to
    the stops exchange and expiring as its inbox does."""
    name = f"{STOPS_EXCHANGE}.{inbox.removeprefix(INBOX_PREFIX)}"
    return Queue(
        name, exchange=stops_exchange(), routing_key=STOPS_ROUTING_KEY, expires=INBOX_EXPIRES
    )
