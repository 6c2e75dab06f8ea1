"""Tests of the transports: the event-driven memory transport (prompt delivery and prompt
shutdown), Redis's options, and how every connection tries again a broker that went away."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu.utils.functional
import pytest
from kombu import Connection, Exchange, Queue
from kombu.exceptions import OperationalError

from config.settings import Settings
from tests.support.processes import free_port
from tests.workers.conftest import unique_name
from workers.celery_app import create_celery
from workers.transports import (
    AMQP_HEARTBEAT,
    EMBEDDED_TRANSPORT,
    RECONNECT_INTERVAL_MAX,
    REDIS_OWNER_BOUND,
    REDIS_RESTORE_BOUND,
    REDIS_SOCKET_TIMEOUT,
    MemoryTransport,
    transport_options,
)

#: Kombu's memory transport would sleep this long between polls; ours must not poll at all.
SLOW_POLLING = 5.0


@pytest.fixture
def queue(memory_broker: None) -> Queue:
    """A queue of its own on the memory broker."""
    name = unique_name("test-queue").lower()
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


@pytest.fixture
def connection(memory_broker: None) -> Iterator[Connection]:
    """A connection through Celeriac's memory transport, with a long polling interval."""
    conn = Connection(
        "memory://",
        transport=EMBEDDED_TRANSPORT,
        transport_options={"polling_interval": SLOW_POLLING},
    )
    try:
        yield conn
    finally:
        conn.release()


class Drainer(threading.Thread):
    """A consumer blocked in ``drain_events``; records when and how it returned."""

    def __init__(self, connection: Connection, timeout: float) -> None:
        super().__init__(daemon=True)
        self.connection = connection
        self.timeout = timeout
        self.blocked = threading.Event()
        self.returned_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        self.blocked.set()
        try:
            self.connection.drain_events(timeout=self.timeout)
        except BaseException as exc:
            self.error = exc
        finally:
            self.returned_at = time.monotonic()


def test_embedded_transport_is_the_event_driven_one(connection: Connection) -> None:
    assert isinstance(connection.transport, MemoryTransport)


def test_message_from_another_thread_wakes_a_blocked_consumer_at_once(
    connection: Connection, queue: Queue
) -> None:
    # Given a consumer blocked in drain_events on an empty queue
    received: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        received.append(body)
        message.ack()

    with connection.Consumer(queue, callbacks=[on_message], accept=["json"]):
        drainer = Drainer(connection, timeout=10)
        drainer.start()
        assert drainer.blocked.wait(5)
        time.sleep(0.05)  # let it reach its wait
        assert drainer.returned_at is None
        # When another thread publishes on its own connection
        published_at = 0.0

        def publish() -> None:
            nonlocal published_at
            with Connection("memory://", transport=EMBEDDED_TRANSPORT) as other:
                producer = other.Producer(serializer="json")
                published_at = time.monotonic()
                producer.publish(
                    {"hello": "world"},
                    exchange=queue.exchange,
                    routing_key=queue.routing_key,
                    declare=[queue],
                )

        publisher = threading.Thread(target=publish)
        publisher.start()
        publisher.join(5)
        drainer.join(5)
    # Then the consumer got the message within a few milliseconds
    assert drainer.error is None
    assert received == [{"hello": "world"}]
    assert drainer.returned_at is not None
    assert drainer.returned_at - published_at < 0.05


def test_drain_events_still_times_out_when_nothing_comes(
    connection: Connection, queue: Queue
) -> None:
    with connection.Consumer(queue, callbacks=[lambda body, message: None]):
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            connection.drain_events(timeout=0.1)
        elapsed = time.monotonic() - start
    assert 0.1 <= elapsed < 1.0


def test_close_connection_wakes_a_blocked_consumer_at_once(
    connection: Connection, queue: Queue
) -> None:
    # Given a consumer blocked in drain_events with a long timeout
    with connection.Consumer(queue, callbacks=[lambda body, message: None]):
        drainer = Drainer(connection, timeout=10)
        drainer.start()
        assert drainer.blocked.wait(5)
        time.sleep(0.05)  # let it reach its wait
        assert drainer.returned_at is None
        # When its transport closes the connection (what a stopping worker does)
        closed_at = time.monotonic()
        connection.transport.close_connection(connection.connection)
        drainer.join(5)
    # Then drain_events gives up at once with TimeoutError, instead of waiting it out
    assert isinstance(drainer.error, TimeoutError)
    assert drainer.returned_at is not None
    assert drainer.returned_at - closed_at < 0.2


def test_redis_looks_for_lost_messages_often_enough_to_keep_the_readmes_bound() -> None:
    # Given the settings of a Redis broker with a short visibility timeout
    settings = Settings(broker_url="redis://127.0.0.1:6379/0", visibility_timeout=15)
    # When Celeriac builds its transport options
    options = transport_options(settings)["broker_transport_options"]
    # Then Kombu looks every REDIS_RESTORE_INTERVAL seconds, not every 10 x 10 (its default)
    assert options["visibility_timeout"] == 15
    assert options["unacked_restore_interval"] * options["unacked_restore_throttle"] <= 2
    # And a look's lock left by a killed consumer expires in time for the bound
    assert options["unacked_mutex_expire"] + options["unacked_restore_interval"] <= 10
    assert REDIS_RESTORE_BOUND <= 10
    # And a dead consumer's liveness key outlives three looks, and expires in time for the
    # README's 12 s
    assert options["owner_ttl"] >= 3 * options["unacked_restore_interval"]
    assert options["owner_ttl"] + options["unacked_restore_interval"] == REDIS_OWNER_BOUND <= 12


def test_a_rabbitmq_consumer_sends_heartbeats_often_enough_to_notice_a_dead_link() -> None:
    # Given the settings of a RabbitMQ broker
    settings = Settings(broker_url="amqp://guest:guest@127.0.0.1:5672//")
    # When Celeriac builds its Celery app
    celery = create_celery(settings)
    # Then its consumers ask for AMQP_HEARTBEAT (Celery's 120 s would leave RabbitMQ's 60):
    # a consumer cut off from the network sends one within that, and py-amqp drops the
    # connection when it is not acknowledged
    assert celery.conf.broker_heartbeat == AMQP_HEARTBEAT
    assert 5 <= AMQP_HEARTBEAT <= 20


def test_redis_gives_up_a_silent_connection_for_a_new_one() -> None:
    # Given the settings of a Redis broker
    settings = Settings(broker_url="redis://127.0.0.1:6379/0")
    # When Celeriac builds its transport options
    options = transport_options(settings)["broker_transport_options"]
    # Then a command, or a connection attempt, waits REDIS_SOCKET_TIMEOUT for Redis at most
    # (Kombu and redis-py would wait for ever: a worker cut off from the network and back
    # would wait for TCP's next retransmission on each connection, a minute or two)
    assert options["socket_timeout"] == options["socket_connect_timeout"] == REDIS_SOCKET_TIMEOUT
    # And that is long enough for a busy Redis, short enough to be back soon
    assert 5 <= REDIS_SOCKET_TIMEOUT <= 15


def test_a_process_tries_a_broker_that_went_away_again_every_two_seconds_at_most(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Celery's consumer asks its connection to reconnect naming no intervals: Kombu's own
    (2 s, growing to 30 s) left a worker idle long after the broker was back."""
    # Given the connections of a Celeriac app whose broker is away (nothing on its port)
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    celery = create_celery(Settings(broker_url=url, data_dir=tmp_path))
    assert celery.conf.broker_connection_max_retries is None
    waits: list[float] = []
    monkeypatch.setattr(kombu.utils.functional, "sleep", lambda seconds: None)
    for conn in (celery.connection_for_read(), celery.connection_for_write()):
        # When each tries to connect as Celery's consumer does, six times
        with pytest.raises(OperationalError):
            conn.ensure_connection(lambda exc, interval: waits.append(interval), 6)
        conn.release()
    # Then the waits between tries grow to RECONNECT_INTERVAL_MAX seconds, and no further
    assert len(waits) == 12
    assert waits[:6] == waits[6:]
    assert waits[0] < RECONNECT_INTERVAL_MAX == max(waits) == waits[-1] <= 2.0
