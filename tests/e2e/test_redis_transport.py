"""Celeriac's Redis transport on the real Redis: one client per channel, nothing lost, and a
dead owner's messages put back once."""

from __future__ import annotations

import base64
import collections
import json
import threading
import time
import uuid
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.message import Message
from kombu.utils.encoding import bytes_to_str

from tests.support.servers import PrivateRedis
from workers.redis_transport import OWNER_KEY_PREFIX, RedisTransport
from workers.transports import REDIS_TRANSPORT

MESSAGES = 200
THREADS = 4
#: Messages held by a dead owner, and by a live one, in the sweepers' race.
DEAD = 200
LIVE = 10


@pytest.mark.e2e
def test_messages_published_from_threads_arrive_once_and_acks_leave_nothing_unacked(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a queue on Redis, reached through Celeriac's transport
    queue = Queue("celeriac-transport-test", Exchange("celeriac-transport-test"), "t")
    built: list[object] = []
    build = redis.Redis.__init__

    def counting_init(self: redis.Redis, *args: Any, **kwargs: Any) -> None:
        built.append(self)
        build(self, *args, **kwargs)

    with Connection(redis_url, transport=REDIS_TRANSPORT) as conn:
        assert isinstance(conn.transport, RedisTransport)
        producer = conn.Producer()
        producer.publish({"n": -1}, exchange=queue.exchange, routing_key="t", declare=[queue])
        monkeypatch.setattr(redis.Redis, "__init__", counting_init)

        # When threads publish through one channel and a consumer acknowledges each message
        def publish(first: int) -> None:
            for n in range(first, MESSAGES, THREADS):
                producer.publish({"n": n}, exchange=queue.exchange, routing_key="t")

        threads = [threading.Thread(target=publish, args=(i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        received: list[int] = []

        def on_message(body: dict[str, int], message: Message) -> None:
            received.append(body["n"])
            message.ack()

        with conn.Consumer(queue, callbacks=[on_message], accept=["json"]):
            while len(received) < MESSAGES + 1:
                conn.drain_events(timeout=10)

        # Then every message arrived once, no client was built per command, and Redis holds
        # no unacknowledged message
        assert sorted(received) == list(range(-1, MESSAGES))
        assert built == []
        assert redis.Redis.from_url(redis_url).hlen("unacked") == 0


@pytest.mark.e2e
def test_a_busy_queue_is_polled_with_the_claim_and_a_flushed_script_is_loaded_again(
    private_redis: PrivateRedis,
) -> None:
    # Given a queue holding messages on a Redis of the test's own (whose command counts are
    # this test's alone), consumed through Celeriac's transport
    queue = Queue("celeriac-busy-test", Exchange("celeriac-busy-test"), "b")
    client = redis.Redis.from_url(private_redis.url)
    with Connection(private_redis.url, transport=REDIS_TRANSPORT) as conn:
        producer = conn.Producer()
        for n in range(MESSAGES):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key="b", declare=[queue])
        received: list[int] = []

        def on_message(body: dict[str, int], message: Message) -> None:
            received.append(body["n"])
            message.ack()
            if len(received) == MESSAGES // 2:
                # (as after a restart of Redis: its scripts are gone)
                client.script_flush()

        # When a consumer takes them all, the claim script flushed halfway
        commands_before = client.info("commandstats")
        with conn.Consumer(queue, callbacks=[on_message], accept=["json"]):
            while len(received) < MESSAGES:
                conn.drain_events(timeout=10)
        stats = client.info("commandstats")

    # Then each arrived once, in order, and none is left unacknowledged
    assert received == list(range(MESSAGES))
    assert client.hlen("unacked") == 0 and client.hlen("unacked_owner") == 0

    # And while the queue held messages the consumer polled with the claim, not the wait:
    # about one round trip per message (Redis counts its commands)
    def calls(name: str) -> int:
        before = commands_before.get(f"cmdstat_{name}", {}).get("calls", 0)
        return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) - int(before)

    assert calls("blmove") <= 3, stats
    assert calls("evalsha") + calls("eval") >= MESSAGES


def number(item: bytes) -> int:
    """The number in a message as Kombu stores it in Redis (its body in base64)."""
    payload = json.loads(item)
    assert payload["properties"]["body_encoding"] == "base64"
    n: int = json.loads(base64.b64decode(payload["body"]))["n"]
    return n


@pytest.mark.e2e
def test_two_sweepers_racing_acks_put_back_each_message_of_a_dead_owner_once(
    redis_url: str,
) -> None:
    """Restoring a dead owner's message is one transaction: sweepers looking at once, and
    acknowledgements racing them, never put a message back twice, nor leave one noted."""
    # Given 200 messages taken by an owner whose liveness key is gone (never set), 10 taken
    # by a live one (its key set for the test's length: a 1 s key renewed by a thread would
    # lapse on a loaded machine), and four sweepers that have renewed their own keys a while
    queue = Queue("celeriac-owners-test", Exchange("celeriac-owners-test"), "o")
    options = {"owner_ttl": 2.0, "visibility_timeout": 3600}
    connections = [
        Connection(redis_url, transport=REDIS_TRANSPORT, transport_options=options)
        for _ in range(5)
    ]
    try:
        channels = [conn.default_channel for conn in connections]
        producer = connections[0].Producer()
        for n in range(DEAD + LIVE):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key="o", declare=[queue])
        client = redis.Redis.from_url(redis_url)
        live_owner = f"alive.{uuid.uuid4().hex[:8]}"
        client.set(OWNER_KEY_PREFIX + live_owner, "1", ex=120)
        claimer = channels[0]
        keys = [claimer._q_for_pri(queue.name, pri) for pri in claimer.priority_steps]
        keys += [claimer.unacked_index_key, claimer.unacked_key, claimer.unacked_owner_key]
        tags: dict[int, str] = {}
        for n in range(DEAD + LIVE):
            owner = "gone.1.dead" if n < DEAD else live_owner
            _, item = claimer._claim_script(keys=keys, args=[time.time(), owner])
            payload = json.loads(item)
            tags[number(item)] = payload["properties"]["delivery_tag"]
        idle = Queue("celeriac-owners-idle", Exchange("celeriac-owners-idle"), "i")
        consumers = [conn.Consumer(idle, callbacks=[]) for conn in connections[1:]]
        for consumer in consumers:
            consumer.consume()
        time.sleep(2.5)  # each sweeper's renewals steady for its owner_ttl

        # When four sweepers look at once while the even messages are acknowledged
        start = threading.Barrier(5)
        restored: list[int] = []

        def sweep(channel: Any) -> None:
            start.wait()
            restored.append(channel.qos.restore_orphans())

        def acknowledge() -> None:
            start.wait()
            for n in range(0, DEAD, 2):
                claimer.qos._remove_from_indices(tags[n]).execute()

        threads = [threading.Thread(target=sweep, args=(ch,)) for ch in channels[1:]]
        threads.append(threading.Thread(target=acknowledge))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

        # Then each odd message of the dead owner is back in its queue once, an even one at
        # most once (put back before its acknowledgement came), and the live owner's stay held
        back = [number(item) for item in client.lrange(queue.name, 0, -1)]
        counts = collections.Counter(back)
        assert all(count == 1 for count in counts.values()), counts
        assert {n for n in range(1, DEAD, 2)} <= set(counts) <= set(range(DEAD)), sorted(counts)
        assert sum(restored) == len(back)
        held = {bytes_to_str(tag) for tag in client.hkeys(claimer.unacked_key)}
        assert held == {tags[n] for n in range(DEAD, DEAD + LIVE)}
        owners = {bytes_to_str(tag) for tag in client.hkeys(claimer.unacked_owner_key)}
        assert owners == held
        assert client.zcard(claimer.unacked_index_key) == LIVE
        for consumer in consumers:
            consumer.cancel()
    finally:
        for conn in connections:
            conn.release()
