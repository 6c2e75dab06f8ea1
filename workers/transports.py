"""Transport profiles: what Celeriac sets for each kind of broker URL.

Embedded (``memory://``)
    Kombu's in-memory transport, made event-driven: a consumer waiting for messages wakes as
    soon as one is published in this process, where Kombu's would sleep a polling interval
    (and would take two seconds to notice that its worker is stopping). Messages live only in
    this process: the embedded mode runs every worker here.

Redis (``redis://``, ``rediss://``)
    Kombu's Redis transport, with one redis-py client per channel: see ``redis_transport``
    (a module of its own, so that other processes never import redis-py).

Every other URL (``amqp://``, ``sqs://``) uses Kombu's own transport. All take the options of
:func:`transport_options`.
"""

from __future__ import annotations

import threading
import time
from queue import Empty
from typing import Any

from kombu.transport import memory

from config.settings import Settings

EMBEDDED_TRANSPORT = "workers.transports:MemoryTransport"
REDIS_TRANSPORT = "workers.redis_transport:RedisTransport"


class _Doorbell:
    """Rings on every publish; waiters compare a counter so no ring is ever missed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.rings = 0

    def ring(self) -> None:
        with self._cond:
            self.rings += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        with self._cond:
            if self.rings == seen:
                self._cond.wait(timeout)


#: The memory broker is process-wide, and so is its doorbell.
DOORBELL = _Doorbell()


class MemoryChannel(memory.Channel):
    """Kombu's memory channel that rings the doorbell when it stores a message."""

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        super()._put(queue, message, **kwargs)
        DOORBELL.ring()

    def _put_fanout(
        self, exchange: Any, message: Any, routing_key: Any = None, **kwargs: Any
    ) -> None:
        super()._put_fanout(exchange, message, routing_key, **kwargs)
        DOORBELL.ring()


class MemoryTransport(memory.Transport):
    """Kombu's memory transport whose consumers wait on the doorbell instead of polling."""

    Channel = MemoryChannel

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self._closing = False

    def drain_events(self, connection: Any, timeout: float | None = None, **_: Any) -> None:
        """Deliver one message, waiting up to ``timeout`` for it to arrive."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            seen = DOORBELL.rings
            cycle = self.cycle
            if self._closing or cycle is None:
                raise TimeoutError()
            try:
                cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            wait = 1.0
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    raise TimeoutError()
            DOORBELL.wait(seen, min(wait, 1.0))

    def close_connection(self, connection: Any) -> None:
        """Close, and wake a consumer blocked in :meth:`drain_events` so it can stop."""
        self._closing = True
        DOORBELL.ring()
        super().close_connection(connection)


def transport_options(settings: Settings) -> dict[str, Any]:
    """Celery settings for the broker in ``settings``: the transport's profile.

    ====== ===================================================================================
    memory Event-driven in-process transport (above).
    amqp   Publisher confirms: ``send_task`` returns once RabbitMQ has the message.
    redis  One client per channel (above); ``visibility_timeout``: an unacknowledged message
           is redelivered after it.
    sqs    ``visibility_timeout`` and ``region``; long polling; queue names with ``-``.
    ====== ===================================================================================
    """
    kind = settings.transport
    if kind == "memory":
        return {"broker_transport": EMBEDDED_TRANSPORT}
    if kind == "amqp":
        return {"broker_transport_options": {"confirm_publish": True}}
    if kind == "redis":
        return {
            "broker_transport": REDIS_TRANSPORT,
            "broker_transport_options": {
                "visibility_timeout": settings.visibility_timeout,
                "fanout_prefix": True,
                "fanout_patterns": True,
            },
        }
    if kind == "sqs":
        return {
            "broker_transport_options": {
                "visibility_timeout": min(settings.visibility_timeout, 43200),
                "region": settings.sqs_region,
                "wait_time_seconds": 10,
                "polling_interval": 0.1,
                "queue_name_prefix": "",
            }
        }
    return {"broker_transport_options": {"polling_interval": settings.polling_interval}}
