"""Kombu's Redis transport, with one redis-py client per channel and no message lost in receipt.

One client per channel
    Kombu's Redis channel builds a new redis-py client, with its table of reply callbacks, for
    every publish, receipt and acknowledgement: about a tenth of a millisecond of CPU each,
    several times per task in every process. A redis-py client is safe to share between
    threads, and its connections still come from the channel's pool, so this channel builds
    one.

Receipt without a window
    Kombu takes a message with ``BRPOP``, then notes it as unacknowledged (``unacked`` and
    ``unacked_index``) in a second command. Between the two, the message is only in the
    consumer's memory (or in its socket, while its prefetch is full): a consumer killed then
    loses it, and nothing will ever deliver it again. Here a channel that consumes one queue
    waits with ``BLMOVE queue queue RIGHT RIGHT`` instead, which blocks until the queue holds
    a message but moves nothing (a documented no-op: Redis 6.2 or later), then takes the
    message and notes it as unacknowledged in one script, atomically (:data:`_CLAIM`). A
    consumer killed at any moment leaves each message either in its queue or noted, and a
    noted one is put back after the visibility timeout by any live consumer's sweep.
    Channels that consume several queues at once, or run under a ``global_keyprefix``, keep
    Kombu's ``BRPOP``: Celeriac's workers consume one queue per channel (a service worker's
    task queue of a one-service deployment, the control plane's queue; the inbox has a
    channel of its own), a worker of several services does not.

Celery loads the class by name (``transports.REDIS_TRANSPORT``) only for ``redis://`` URLs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from queue import Empty
from typing import Any

from kombu.transport import redis, virtual
from kombu.utils.json import loads

#: Take the first message of the queue's keys (its priority lists, highest first, as ``BRPOP``
#: would), and note it as unacknowledged the way Kombu's ``QoS.append`` does, in one step.
#: KEYS: the queue's lists, then ``unacked_index`` and ``unacked``; ARGV: the time now.
#: The stored entry is ``[payload, exchange, routing_key]``, the payload as received.
_CLAIM = """
local lists = #KEYS - 2
for i = 1, lists do
  local item = redis.call('RPOP', KEYS[i])
  if item then
    local properties = cjson.decode(item)['properties']
    local info = properties['delivery_info']
    local tag = properties['delivery_tag']
    redis.call('ZADD', KEYS[lists + 1], ARGV[1], tag)
    redis.call('HSET', KEYS[lists + 2], tag,
      '[' .. item .. ',' .. cjson.encode(info['exchange']) .. ','
      .. cjson.encode(info['routing_key']) .. ']')
    return {KEYS[i], item}
  end
end
return false
"""


class _NotingQoS(redis.QoS):
    """Kombu's Redis QoS that skips noting a message the claim script noted already."""

    def append(self, message: Any, delivery_tag: Any) -> None:
        """Track a delivered message; note it in Redis unless its claim did."""
        channel: _RedisChannel = self.channel
        if channel.claimed == delivery_tag:
            channel.claimed = None
            virtual.QoS.append(self, message, delivery_tag)
            return
        super().append(message, delivery_tag)


class _RedisChannel(redis.Channel):
    """A Redis channel that reuses one client for its commands and claims what it receives."""

    QoS = _NotingQoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The queue whose ``BLMOVE`` wait is in flight, if the wait is ours (not ``BRPOP``).
        self._waiting_on: str | None = None
        #: The delivery tag of the message being delivered, noted by :data:`_CLAIM`.
        self.claimed: str | None = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client or self._commands_client

    @cached_property
    def _commands_client(self) -> Any:
        return self._create_client()

    @cached_property
    def _claim_script(self) -> Any:
        return self._commands_client.register_script(_CLAIM)

    def _brpop_start(self, timeout: float | None = None) -> None:
        if self.global_keyprefix or len(self.active_queues) != 1:
            self._waiting_on = None
            super()._brpop_start(timeout)
            return
        [queue] = self._queue_cycle.consume(1)
        if timeout is None:
            timeout = self.brpop_timeout
        connection = self.client.connection
        self._in_poll = connection
        # Kombu's own attributes, as its ``_brpop_start`` sets them (its defaults are None).
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]
        self._waiting_on = queue
        connection.send_command("BLMOVE", queue, queue, "RIGHT", "RIGHT", timeout or 0)

    def _brpop_read(self, **options: Any) -> bool:
        queue = self._waiting_on
        if queue is None:
            return bool(super()._brpop_read(**options))
        self._waiting_on = None
        try:
            try:
                self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            # Whether the wait saw a message or timed out (the priority lists are not
            # waited on), the claim takes whatever is there, or finds another consumer was
            # quicker.
            keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps]
            claimed = self._claim_script(
                keys=[*keys, self.unacked_index_key, self.unacked_key], args=[time.time()]
            )
            if not claimed:
                raise Empty()
            payload = loads(claimed[1])
            self.claimed = payload["properties"]["delivery_tag"]
            try:
                self.connection._deliver(payload, queue)
            finally:
                self.claimed = None
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as Kombu's ``_brpop_read``
            self._flush_brpop_reauth()


class RedisTransport(redis.Transport):
    """Kombu's Redis transport with :class:`_RedisChannel`."""

    Channel = _RedisChannel
