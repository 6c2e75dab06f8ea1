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
    noted one is put back after the visibility timeout by any live consumer's sweep. While
    the queue has messages (the last claim took one), the channel sends the claim itself as
    its poll, without the wait: one round trip per message under load, as ``BRPOP``; an
    empty claim goes back to waiting.
    Channels that consume several queues at once, or run under a ``global_keyprefix``, keep
    Kombu's ``BRPOP``: Celeriac's workers consume one queue per channel (a service worker's
    task queue of a one-service deployment, the control plane's queue; the inbox has a
    channel of its own), a worker of several services does not.

Owners: a dead consumer's messages back at once
    Kombu puts an unacknowledged message back only once it is older than the visibility
    timeout (12 h in Celeriac), although a consumer killed holding it will never acknowledge
    it. So every process that consumes here has an owner id (``HOST.PID.RANDOM``), and a
    liveness key in Redis (``celeriac.owner.<id>``) that lives ``owner_ttl`` seconds (a
    transport option; ``max(3 * unacked_restore_interval, 10)`` by default: 10 s in Celeriac)
    and that a daemon thread of the process renews every quarter of that, whatever its event
    loop does (a worker whose pool threads are all busy, or that finishes its runs in a warm
    shutdown, still renews). The claim notes each message's owner too (hash
    ``unacked_owner``, delivery tag to owner id; acknowledgement, rejection and restoration
    delete the entry), and every consumer's periodic look for overdue messages also puts
    back, at once, every message whose owner's key is gone: a message of a killed consumer is
    back in its queue within ``owner_ttl`` + one look (``REDIS_RESTORE_INTERVAL``) of the
    kill. A message is put back in one transaction that watches its entry, its owner's entry
    and the owner's key: two consumers looking at once, or a look racing an acknowledgement or
    the owner's renewal, never put one message back twice nor put back an acknowledged one.
    A consumer looks for dead owners only once it has renewed its own key without a gap for
    ``owner_ttl`` seconds: after Redis or the network was away, every live owner has renewed
    its key again before anyone is judged dead. Messages noted by Kombu's own ``BRPOP`` path
    or by an older Celeriac have no owner, and wait for the visibility timeout as before.

    The cost: a process frozen, or cut off from Redis, for longer than ``owner_ttl`` loses its
    messages to the others, and its runs may be repeated (at least once; the control plane
    records each task once, and the first outcome wins).

Celery loads the class by name (``transports.REDIS_TRANSPORT``) only for ``redis://`` URLs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from queue import Empty
from typing import Any

from kombu.transport import redis, virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis.exceptions import ResponseError

logger = logging.getLogger(__name__)

#: The liveness key of an owner is this prefix followed by its id.
OWNER_KEY_PREFIX = "celeriac.owner."
#: The shortest life of a liveness key, in seconds (see ``owner_ttl``).
OWNER_TTL_MIN = 10
#: A key is renewed this many times per ``owner_ttl``.
RENEWALS_PER_TTL = 4

#: Take the first message of the queue's keys (its priority lists, highest first, as ``BRPOP``
#: would), and note it as unacknowledged the way Kombu's ``QoS.append`` does, in one step.
#: KEYS: the queue's lists, then ``unacked_index``, ``unacked`` and ``unacked_owner``; ARGV:
#: the time now, and this process's owner id. The stored entry is ``[payload, exchange,
#: routing_key]``, the payload as received.
_CLAIM = """
local lists = #KEYS - 3
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
    redis.call('HSET', KEYS[lists + 3], tag, ARGV[2])
    return {KEYS[i], item}
  end
end
return false
"""


class _Owner:
    """This process as an owner of messages: its id, and the thread that renews its key
    through each of its consuming channels."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self._id = ""
        self._channels: weakref.WeakSet[_RedisChannel] = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        #: Set when a channel joins: the renewals' period may have become shorter.
        self._joined = threading.Event()

    @property
    def id(self) -> str:
        """``HOST.PID.RANDOM``: a forked child is an owner of its own."""
        with self._lock:
            self._forked()
            return self._id

    def _forked(self) -> None:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._id = f"{socket.gethostname()}.{self._pid}.{uuid.uuid4().hex[:8]}"
            self._channels = weakref.WeakSet()
            self._thread = None

    def add(self, channel: _RedisChannel) -> None:
        """Renew this process's key through ``channel`` from now on (once at once)."""
        channel.renew_owner()
        with self._lock:
            self._forked()
            self._channels.add(channel)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._renew, name="celeriac-owner", daemon=True
                )
                self._thread.start()
        self._joined.set()

    def discard(self, channel: _RedisChannel) -> None:
        """Stop renewing through ``channel`` (it closes)."""
        with self._lock:
            self._channels.discard(channel)

    def _renew(self) -> None:
        while True:
            with self._lock:
                channels = list(self._channels)
            period = OWNER_TTL_MIN / RENEWALS_PER_TTL
            for channel in channels:
                channel.renew_owner()
                period = min(period, channel.owner_ttl / RENEWALS_PER_TTL)
            self._joined.wait(period)
            self._joined.clear()


#: The process-wide owner.
OWNER = _Owner()


class _NotingQoS(redis.QoS):
    """Kombu's Redis QoS that skips noting a message the claim script noted already, forgets
    its owner with its other notes, and puts back at once the messages of dead owners."""

    def append(self, message: Any, delivery_tag: Any) -> None:
        """Track a delivered message; note it in Redis unless its claim did."""
        channel: _RedisChannel = self.channel
        if channel.claimed == delivery_tag:
            channel.claimed = None
            virtual.QoS.append(self, message, delivery_tag)
            return
        super().append(message, delivery_tag)

    def _remove_from_indices(self, delivery_tag: Any, pipe: Any = None) -> Any:
        # Kombu's acknowledgement, rejection and restoration all forget a message here.
        pipe = super()._remove_from_indices(delivery_tag, pipe)
        return pipe.hdel(self.channel.unacked_owner_key, delivery_tag)

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        """Put back the overdue messages (Kombu), then those of dead owners."""
        super().restore_visible(start, num, interval)
        self.restore_orphans()

    def restore_orphans(self) -> int:
        """Put back every message whose owner's liveness key is gone; how many were."""
        channel: _RedisChannel = self.channel
        if not channel.steady_for(channel.owner_ttl):
            return 0
        with channel.conn_or_acquire() as client:
            owners: dict[str, list[str]] = {}
            for tag, owner in client.hgetall(channel.unacked_owner_key).items():
                owners.setdefault(bytes_to_str(owner), []).append(bytes_to_str(tag))
            if not owners:
                return 0
            pipe = client.pipeline(transaction=False)
            for owner in owners:
                pipe.exists(OWNER_KEY_PREFIX + owner)
            alive = pipe.execute()
            restored = 0
            for (owner, tags), live in zip(owners.items(), alive, strict=True):
                if not live:
                    restored += sum(self._restore_orphan(tag, owner, client) for tag in tags)
            return restored

    def _restore_orphan(self, tag: str, owner: str, client: Any) -> bool:
        """Put back the message of ``tag`` if ``owner`` still holds it and is still dead, in
        one transaction: a concurrent acknowledgement, restoration or renewal undoes it."""
        channel: _RedisChannel = self.channel
        owner_key = OWNER_KEY_PREFIX + owner
        restored = False

        def restore(pipe: Any) -> None:
            nonlocal restored
            restored = False
            held_by = pipe.hget(channel.unacked_owner_key, tag)
            if held_by is None or bytes_to_str(held_by) != owner or pipe.exists(owner_key):
                pipe.unwatch()
                return
            entry = pipe.hget(self.unacked_key, tag)
            pipe.multi()
            self._remove_from_indices(tag, pipe)
            if entry:
                payload, exchange, routing_key = loads(bytes_to_str(entry))
                channel._do_restore_message(payload, exchange, routing_key, pipe)
                restored = True

        client.transaction(restore, self.unacked_key, channel.unacked_owner_key, owner_key)
        if restored:
            logger.info("Put back message %s of dead consumer %s", tag, owner)
        return restored


class _RedisChannel(redis.Channel):
    """A Redis channel that reuses one client for its commands and claims what it receives."""

    QoS = _NotingQoS
    # One more option than Kombu's tuple (whose exact type the checker infers).
    from_transport_options = (*redis.Channel.from_transport_options, "owner_ttl")  # type: ignore[assignment]
    #: Seconds a liveness key lives past its renewal; 0: ``max(3 * look interval, 10)``.
    owner_ttl: float = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.owner_ttl:
            self.owner_ttl = max(3 * self.unacked_restore_interval, OWNER_TTL_MIN)
        self.unacked_owner_key = f"{self.unacked_key}_owner"
        #: When this channel's renewals began without a gap, and when the last one was.
        self._steady_since: float | None = None
        self._renewed_at = 0.0
        self._owning = False
        #: The queue whose ``BLMOVE`` wait (or claim) is in flight, if the poll is ours (not
        #: ``BRPOP``), and whether the poll is the claim itself.
        self._waiting_on: str | None = None
        self._claiming = False
        #: The last claim took a message: the queue may hold more, so poll with the claim.
        self._busy = False
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

    def basic_consume(self, queue: Any, *args: Any, **kwargs: Any) -> Any:
        """Consume ``queue``, this process's liveness key alive from now on."""
        if not self._owning:
            self._owning = True
            OWNER.add(self)
        return super().basic_consume(queue, *args, **kwargs)

    def close(self) -> None:
        OWNER.discard(self)
        super().close()

    def renew_owner(self) -> None:
        """Renew this process's liveness key (from the owner's thread, or at once)."""
        owner_ttl = self.owner_ttl
        try:
            self._commands_client.set(OWNER_KEY_PREFIX + OWNER.id, "1", px=int(owner_ttl * 1000))
        except Exception:
            # Redis away, or this channel closed: the next renewal tries again, and the
            # renewals begin again from there.
            self._steady_since = None
            logger.debug("Could not renew the owner's key", exc_info=True)
            return
        now = time.monotonic()
        if self._steady_since is None or now - self._renewed_at > owner_ttl / 2:
            self._steady_since = now
        self._renewed_at = now

    def steady_for(self, seconds: float) -> bool:
        """Whether this channel has renewed its key without a gap for ``seconds``."""
        since = self._steady_since
        return since is not None and time.monotonic() - since >= seconds

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
        self._claiming = self._busy
        if self._claiming:
            keys = self._claim_keys(queue)
            script = self._claim_script
            connection.send_command("EVALSHA", script.sha, len(keys), *keys, time.time(), OWNER.id)
        else:
            connection.send_command("BLMOVE", queue, queue, "RIGHT", "RIGHT", timeout or 0)

    def _claim_keys(self, queue: str) -> list[str]:
        """The keys of :data:`_CLAIM` for ``queue``."""
        lists = [self._q_for_pri(queue, pri) for pri in self.priority_steps]
        return [*lists, self.unacked_index_key, self.unacked_key, self.unacked_owner_key]

    def _brpop_read(self, **options: Any) -> bool:
        queue = self._waiting_on
        if queue is None:
            return bool(super()._brpop_read(**options))
        self._waiting_on = None
        try:
            claimed = self._claim_or_wait(queue, **options)
            self._busy = bool(claimed)
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

    def _claim_or_wait(self, queue: str, **options: Any) -> Any:
        """Read the poll's answer: the claim's (a message, or none), or the wait's, after
        which the claim takes whatever is there (or finds another consumer was quicker; the
        priority lists are not waited on, so a wait that timed out is followed by a claim)."""
        connection = self.client.connection
        command = "EVALSHA" if self._claiming else "BLMOVE"
        try:
            answer = self.client.parse_response(connection, command, **options)
        except self.connection_errors:
            connection.disconnect()
            raise
        except ResponseError:
            # The script is gone (Redis restarted): the claim below loads it again.
            if not self._claiming:
                raise
        else:
            if self._claiming:
                return answer
        return self._claim_script(keys=self._claim_keys(queue), args=[time.time(), OWNER.id])


class RedisTransport(redis.Transport):
    """Kombu's Redis transport with :class:`_RedisChannel`."""

    Channel = _RedisChannel
