"""Events sent into running workflows (human in the loop), delivered on the worker's loop.

The control plane sends each event to the inbox queue of the worker that runs the task
(``celeriac.inbox.<worker>``). An event may arrive before the run registered its Context
(it is then held until it does) and more than once (at-least-once delivery: the event's
sequence number makes the second copy a no-op).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from celery import bootsteps
from workflows import Context
from workflows.context.serializers import JsonSerializer

from workers.protocol import INBOX_PREFIX, SERVICE_QUEUE_PREFIX

#: LlamaDeploy clients built on llama-index-core name events by that package's module path.
_LEGACY_PREFIX = "llama_index.core.workflow."


def decode_event(text: str) -> Any:
    """A workflow event from LlamaDeploy's ``event_obj_str`` (llama-index's JSON form)."""
    serializer = JsonSerializer()
    try:
        return serializer.deserialize(text)
    except (ImportError, ModuleNotFoundError, AttributeError):
        if _LEGACY_PREFIX not in text:
            raise
        return serializer.deserialize(text.replace(_LEGACY_PREFIX, "workflows."))


class Inbox:
    """Running contexts by task id, and the events waiting for them."""

    def __init__(self) -> None:
        self._running: dict[str, tuple[Context, asyncio.AbstractEventLoop]] = {}
        self._waiting: dict[str, list[Any]] = {}
        self._seen: dict[str, set[int]] = {}
        self._lock = threading.Lock()

    def attach(self, task_id: str, ctx: Context, loop: asyncio.AbstractEventLoop) -> None:
        """A run began: deliver what arrived early, and what arrives from now on."""
        with self._lock:
            self._running[task_id] = (ctx, loop)
            early = self._waiting.pop(task_id, [])
        for event in early:
            loop.call_soon_threadsafe(ctx.send_event, event)

    def detach(self, task_id: str) -> None:
        """The run ended."""
        with self._lock:
            self._running.pop(task_id, None)
            self._waiting.pop(task_id, None)
            self._seen.pop(task_id, None)

    def deliver(self, task_id: str, seq: int, event: Any) -> bool:
        """Send an event into the task's run; False if it was a duplicate."""
        with self._lock:
            seen = self._seen.setdefault(task_id, set())
            if seq in seen:
                return False
            seen.add(seq)
            running = self._running.get(task_id)
            if running is None:
                self._waiting.setdefault(task_id, []).append(event)
                return True
        ctx, loop = running
        loop.call_soon_threadsafe(ctx.send_event, event)
        return True


class InboxStep(bootsteps.StartStopStep):
    """Makes a service worker consume its inbox queue too (never the control-plane worker)."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def start(self, consumer: Any) -> None:
        """Add the inbox to the queues of a worker that consumes service queues."""
        runtime = consumer.app.runtime
        if runtime.worker_name is None:
            runtime.worker_name = consumer.hostname
        names = [q.name for q in consumer.task_consumer.queues]
        serves = any(
            n.startswith(SERVICE_QUEUE_PREFIX) and not n.startswith(INBOX_PREFIX) for n in names
        )
        if serves and runtime.inbox_queue not in names:
            consumer.add_task_queue(runtime.inbox_queue)
