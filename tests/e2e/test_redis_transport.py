"""Celeriac's Redis transport on the real Redis: one client per channel, nothing lost."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.message import Message

from workers.redis_transport import RedisTransport
from workers.transports import REDIS_TRANSPORT

MESSAGES = 200
THREADS = 4


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
