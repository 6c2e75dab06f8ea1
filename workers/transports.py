"""Transport profiles: what Celeriac sets for each kind of broker URL.

Embedded (``memory://``)
    Kombu's in-memory transport, made event-driven: a consumer waiting for messages wakes as
    soon as one is published in this process, where Kombu's would sleep a polling interval
    (and would take two seconds to notice that its worker is stopping). Messages live only in
    this process: the embedded mode runs every worker here.

Redis (``redis://``, ``rediss://``)
    Kombu's Redis transport, with one redis-py client per channel and no window in which a
    received message is in no list: see ``redis_transport`` (a module of its own, so that
    other processes never import redis-py). Unacknowledged messages are looked for every
    ``REDIS_RESTORE_INTERVAL`` seconds, not Kombu's 100, and those of a consumer that died
    are put back without waiting for the visibility timeout.

Every other URL (``amqp://``, ``sqs://``) uses Kombu's own transport. All take the options of
:func:`transport_options`, and every connection is a :class:`BrokerConnection`: one that tries
again every ``RECONNECT_INTERVAL_MAX`` seconds at most while its broker is away.
"""

from __future__ import annotations

import threading
import time
from queue import Empty
from typing import Any

from kombu import Connection
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


#: Seconds between two looks of a Redis consumer for messages to put back (see above).
REDIS_RESTORE_INTERVAL = 2
#: Seconds the lock of those looks outlives a holder that was killed while looking (a look
#: itself takes milliseconds; two consumers looking at once would only do the work twice).
REDIS_RESTORE_LOCK_EXPIRES = 6
#: A message unacknowledged for the visibility timeout is back in its queue at most this many
#: seconds later: the next look (or, when the last looker was killed with the lock, the look
#: after the lock expired). The README promises 10.
REDIS_RESTORE_BOUND = REDIS_RESTORE_LOCK_EXPIRES + REDIS_RESTORE_INTERVAL
#: Seconds the liveness key of a consuming process outlives its last renewal (see
#: ``redis_transport``, "Owners"): three looks, and never less than 10 s.
REDIS_OWNER_TTL = max(3 * REDIS_RESTORE_INTERVAL, 10)
#: A message held by a consumer that died (killed, or frozen or cut off for longer than
#: ``REDIS_OWNER_TTL``) is back in its queue at most this many seconds later: its key expires,
#: then the next look of any live consumer puts the message back (no lock is waited for).
REDIS_OWNER_BOUND = REDIS_OWNER_TTL + REDIS_RESTORE_INTERVAL
#: Seconds a Redis command, or a connection attempt, may wait for the broker's answer before
#: its connection is given up for a new one. Redis answers in milliseconds; a connection that
#: stays silent this long lost its way (its host was cut off from the network, say).
REDIS_SOCKET_TIMEOUT = 10.0
#: Seconds of the AMQP heartbeat a consumer asks RabbitMQ for (the lower of the two sides'
#: wins: RabbitMQ offers 60, Celery would ask 120). py-amqp drops a connection whose data stays
#: unacknowledged for a second (``TCP_USER_TIMEOUT``), but a consumer that waits for messages
#: sends nothing: cut off from the network, it noticed only when its heartbeat was due, and a
#: connection that lived through a cut then waited for RabbitMQ's next TCP retransmission (46 s
#: after a 60 s cut). A consumer now sends a heartbeat after this long without traffic, which
#: ends a dead connection within a second; RabbitMQ closes its side after two silent intervals,
#: and puts the consumer's unacknowledged messages back in their queues.
AMQP_HEARTBEAT = 10.0


#: How a process tries again to reach a broker that went away: first after this many seconds,
#: each wait this much longer than the last, and never longer than ``RECONNECT_INTERVAL_MAX``.
#: Kombu's own waits (2 s, growing by 2 s up to 30 s) left a worker idle for up to 30 s after
#: the broker was back; a try on a broker that is down costs one refused connection.
RECONNECT_INTERVAL_START = 0.5
RECONNECT_INTERVAL_STEP = 0.5
RECONNECT_INTERVAL_MAX = 2.0


class BrokerConnection(Connection):
    """Kombu's connection, trying again every ``RECONNECT_INTERVAL_MAX`` seconds at most while
    the broker is away (Celery's consumer asks it to, naming no intervals)."""

    def ensure_connection(
        self,
        errback: Any = None,
        max_retries: int | None = None,
        interval_start: float = RECONNECT_INTERVAL_START,
        interval_step: float = RECONNECT_INTERVAL_STEP,
        interval_max: float = RECONNECT_INTERVAL_MAX,
        **kwargs: Any,
    ) -> Any:
        """Connect if not connected, trying again as the constants above say."""
        return super().ensure_connection(
            errback, max_retries, interval_start, interval_step, interval_max, **kwargs
        )

    def as_uri(self, *args: Any, **kwargs: Any) -> str:
        """The broker's URL, as its user wrote it: Celeriac's Redis transport is Kombu's
        with other clients, and monitoring (Flower's broker page) picks its client by the
        URL's scheme, which would otherwise be the transport's class path."""
        uri: str = super().as_uri(*args, **kwargs)
        if uri.startswith(REDIS_TRANSPORT + "://"):
            scheme = "rediss" if self.ssl else "redis"
            return scheme + uri[len(REDIS_TRANSPORT) :]
        return uri


def transport_options(settings: Settings) -> dict[str, Any]:
    """Celery settings for the broker in ``settings``: the transport's profile.

    ====== ===================================================================================
    memory Event-driven in-process transport (above).
    amqp   Publisher confirms: ``send_task`` returns once RabbitMQ has the message; a
           consumer's heartbeat every ``AMQP_HEARTBEAT`` seconds of silence.
    redis  One client per channel, receipt without a window (``redis_transport``);
           ``visibility_timeout``: an unacknowledged message is redelivered after it, within
           ``REDIS_RESTORE_BOUND`` seconds more; ``owner_ttl``: one held by a consumer that
           died is redelivered within ``REDIS_OWNER_BOUND`` seconds; a silent connection is
           replaced after ``REDIS_SOCKET_TIMEOUT``.
    sqs    ``visibility_timeout`` and ``region``; long polling; queue names with ``-``.
    ====== ===================================================================================
    """
    kind = settings.transport
    if kind == "memory":
        return {"broker_transport": EMBEDDED_TRANSPORT}
    if kind == "amqp":
        return {
            "broker_transport_options": {"confirm_publish": True},
            "broker_heartbeat": AMQP_HEARTBEAT,
        }
    if kind == "redis":
        return {
            "broker_transport": REDIS_TRANSPORT,
            "broker_transport_options": {
                "visibility_timeout": settings.visibility_timeout,
                # Kombu looks for messages unacknowledged past the visibility timeout every
                # ``interval * throttle`` seconds (100 by default), in every consumer, under a
                # lock in Redis: look every ``REDIS_RESTORE_INTERVAL`` seconds instead, and
                # let a lock whose holder was killed expire soon, so a lost worker's message
                # comes back within ``visibility_timeout + REDIS_RESTORE_BOUND``.
                "unacked_restore_interval": REDIS_RESTORE_INTERVAL,
                "unacked_restore_throttle": 1,
                "unacked_mutex_expire": REDIS_RESTORE_LOCK_EXPIRES,
                # A message held by a dead consumer comes back within REDIS_OWNER_BOUND.
                "owner_ttl": REDIS_OWNER_TTL,
                # Kombu's and redis-py's default is to wait for ever. A worker cut off from
                # the network then has each connection it was using wait for TCP's next
                # retransmission, which comes a minute or two after a long cut, one
                # connection after the other: the worker's loop, its heartbeats and its
                # reports each stall that long once the link is back. With a timeout, a
                # silent connection is dropped and the command tried on a new one.
                "socket_timeout": REDIS_SOCKET_TIMEOUT,
                "socket_connect_timeout": REDIS_SOCKET_TIMEOUT,
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
