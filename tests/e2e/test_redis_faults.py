"""Redis faults of its own: a consumer killed in the instant after Redis handed it a message.
The faults every broker must survive (a restart under load, a worker or the control-plane
consumer killed) are in ``test_broker_faults.py``, on Redis and on RabbitMQ."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue

from tests.support.processes import READY_TIMEOUT, poll
from tests.support.servers import PrivateRedis
from workers.transports import REDIS_TRANSPORT

#: A consumer that takes messages from one queue and never acknowledges them.
CONSUMER = """\
import sys
from kombu import Connection, Exchange, Queue

url, transport, name = sys.argv[1:]
queue = Queue(name, Exchange(name), routing_key=name)
# A long wait, so that the consumer is still waiting when the test freezes it.
options = {"visibility_timeout": 3600, "polling_interval": 60}
with Connection(url, transport=None if transport == "kombu" else transport,
                transport_options=options) as conn:
    with conn.Consumer([queue], callbacks=[lambda body, message: print("got", body, flush=True)]):
        print("ready", flush=True)
        while True:
            try:
                conn.drain_events(timeout=5)
            except TimeoutError:
                pass
"""


@pytest.mark.e2e
@pytest.mark.parametrize(
    "transport",
    [
        pytest.param(REDIS_TRANSPORT, id="celeriac"),
        pytest.param(
            "kombu",
            id="kombu",
            marks=pytest.mark.xfail(
                strict=True,
                reason="Kombu's Redis transport pops with BRPOP, then notes the message as "
                "unacknowledged: a consumer killed in between loses the message",
            ),
        ),
    ],
)
def test_a_consumer_killed_after_redis_handed_it_a_message_loses_nothing(
    private_redis: PrivateRedis, tmp_path: Path, transport: str
) -> None:
    """The window the control-plane consumer was killed in: Redis answered its wait with a
    message, and it died before it noted the message as unacknowledged."""
    # Given a consumer blocked waiting on an empty queue
    queue = Queue("handed", Exchange("handed"), routing_key="handed")
    log = (tmp_path / "consumer.log").open("wb")
    consumer = subprocess.Popen(
        [sys.executable, "-c", CONSUMER, private_redis.url, transport, queue.name],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).parents[2],
    )
    client = private_redis.client()
    try:
        poll(
            lambda: int(client.info("clients")["blocked_clients"]),
            lambda blocked: blocked >= 1,
            READY_TIMEOUT,
            "the consumer waiting on Redis",
        )
        # When it is frozen, a message arrives (Redis answers the wait at once), and the
        # consumer is killed before it could read the answer
        os.kill(consumer.pid, signal.SIGSTOP)
        with Connection(private_redis.url, transport=REDIS_TRANSPORT) as conn:
            conn.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key="handed")
        poll(
            lambda: int(client.info("clients")["blocked_clients"]),
            lambda blocked: blocked == 0,
            5,
            "Redis answering the consumer's wait",
        )
        consumer.kill()
        consumer.wait(timeout=10)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait(timeout=10)
        log.close()

    # Then the message is still in Redis: in its queue, or noted as unacknowledged
    kept = int(client.llen("handed")) + int(client.hlen("unacked"))
    client.close()
    assert kept == 1, (tmp_path / "consumer.log").read_text()
