"""End to end: a service worker's inbox lives as long as the worker, and no sender revives it."""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import amqp.exceptions
import pytest
import redis
from kombu import Connection, Consumer

from config.settings import Settings
from tests.e2e.conftest import Platform, node
from tests.support.processes import READY_TIMEOUT, STOP_TIMEOUT, poll
from workers.celery_app import broadcast_stops, create_celery, send_to_inbox
from workers.inbox import inbox_entity, stops_entity
from workers.protocol import INBOX_PREFIX, DeliverEvent, StopRuns


def _inbox_of_a_task(platform: Platform, sleepy: Path) -> tuple[str, int]:
    """Serve the sleepy deployment with one worker, run a task long enough to report its start,
    and return the inbox the control plane recorded for it, with the worker's pid."""
    platform.serve(sleepy)
    platform.control_plane()
    worker = platform.service_worker("w1", deployment="Sleepy", service="nap")
    platform.wait_for_workers("Sleepy", {node("w1")})
    [task_id] = platform.submit("Sleepy", [{"seconds": 0.6, "n": 1}])
    assert platform.wait_for_tasks("Sleepy", [task_id])[task_id]["status"] == "succeeded"
    [(inbox,)] = platform.query("SELECT inbox FROM tasks WHERE id = %s", (task_id,))
    return inbox, worker.pid


def _amqp_queue_exists(url: str, name: str) -> bool:
    with Connection(url, connect_timeout=5) as conn:
        try:
            conn.channel().queue_declare(name, passive=True)
        except amqp.exceptions.NotFound:
            return False
    return True


def _redis_traces(url: str, name: str) -> list[bytes]:
    """What Redis holds of queue ``name``: keys that name it (its messages, which only exist
    while there are some) and members of sets that name it (Kombu's bindings of it)."""
    client = redis.Redis.from_url(url)
    wanted = name.encode()
    traces: list[bytes] = []
    try:
        for key in client.keys("*"):
            if wanted in key:
                traces.append(key)
            kind = client.type(key)
            if kind == b"set":
                members = client.smembers(key)
            elif kind == b"zset":
                members = set(client.zrange(key, 0, -1))
            else:
                continue
            traces += [key + b" " + member for member in members if wanted in member]
        return traces
    finally:
        client.close()


def _waiting_in(url: str, inbox: str, transport: str) -> int:
    """How many messages wait in the inbox (on Redis: the keys and bindings it has)."""
    if transport == "redis":
        return len(_redis_traces(url, inbox))
    with Connection(url, connect_timeout=5) as conn:
        return int(conn.channel().queue_declare(inbox, passive=True).message_count)


@pytest.mark.e2e
@pytest.mark.parametrize("transport", ["amqp", "redis"])
def test_a_stopped_worker_leaves_no_inbox_behind(
    transport: str, broker_url: str, make_platform: Callable[[str], Platform], sleepy: Path
) -> None:
    """Each worker process has an inbox of its own, which it deletes when it stops, with the
    events still waiting in it."""
    # Given a worker that ran a task (and so reported its inbox), and runs another
    platform = make_platform(broker_url)
    inbox, pid = _inbox_of_a_task(platform, sleepy)
    assert inbox == f"celeriac.inbox.{node('w1')}.{pid}"
    [worker] = [p for p in platform.processes.started if p.pid == pid]
    [busy] = platform.submit("Sleepy", [{"seconds": 3, "n": 2}])
    poll(
        lambda: platform.tasks("Sleepy")[busy]["status"],
        lambda status: status == "running",
        READY_TIMEOUT,
        "the second task running",
    )

    # When the worker is told to stop (a warm shutdown: it finishes the task first), and an
    # event for the task waits in its inbox, which its consumer no longer empties
    worker.popen.send_signal(signal.SIGTERM)
    sender = create_celery(Settings.from_env({"CELERIAC_BROKER_URL": broker_url}))
    try:

        def an_event_waits() -> int:
            send_to_inbox(sender, inbox, DeliverEvent(task_id=busy, seq=0, event="{}"))
            return _waiting_in(broker_url, inbox, transport)

        poll(an_event_waits, bool, READY_TIMEOUT, "an event waiting in the stopping worker's inbox")
    finally:
        sender.close()
    assert worker.popen.wait(timeout=STOP_TIMEOUT) == 0

    # Then nothing of its inbox is left on the broker
    if transport == "amqp":
        assert not _amqp_queue_exists(broker_url, inbox)
    else:
        assert _redis_traces(broker_url, inbox) == []
    assert platform.wait_for_tasks("Sleepy", [busy])[busy]["status"] == "succeeded"


@pytest.mark.e2e
def test_a_rabbitmq_inbox_expires_and_events_for_a_gone_worker_are_dropped(
    amqp_url: str, make_platform: Callable[[str], Platform], sleepy: Path
) -> None:
    """A crashed worker's inbox expires on RabbitMQ; a sender never declares an inbox."""
    # Given a worker that ran a task
    platform = make_platform(amqp_url)
    inbox, pid = _inbox_of_a_task(platform, sleepy)

    # Then its inbox expires after the README's 10 minutes without a consumer: RabbitMQ
    # refuses to declare it again without that expiry, and accepts it with exactly that one
    with Connection(amqp_url, connect_timeout=5) as conn:
        with pytest.raises(amqp.exceptions.PreconditionFailed):
            conn.channel().queue_declare(inbox, durable=True, auto_delete=False)
        with pytest.raises(amqp.exceptions.PreconditionFailed):
            conn.channel().queue_declare(
                inbox, durable=True, auto_delete=False, arguments={"x-expires": 60_000}
            )
        conn.channel().queue_declare(
            inbox, durable=True, auto_delete=False, arguments={"x-expires": 600_000}
        )

    # When the worker is killed, its inbox stays until it expires
    [worker] = [p for p in platform.processes.started if p.pid == pid]
    worker.kill()
    assert _amqp_queue_exists(amqp_url, inbox)
    with Connection(amqp_url, connect_timeout=5) as conn:
        conn.channel().queue_delete(inbox)  # as RabbitMQ does after INBOX_EXPIRES

    # And an event sent to the gone worker is dropped without bringing its inbox back
    sender = create_celery(Settings.from_env({"CELERIAC_BROKER_URL": amqp_url}))
    try:
        # (publisher confirms: RabbitMQ has routed the message when this returns)
        send_to_inbox(sender, inbox, DeliverEvent(task_id="t-gone", seq=0, event="{}"))
    finally:
        sender.close()
    assert not _amqp_queue_exists(amqp_url, inbox)


@pytest.mark.e2e
@pytest.mark.parametrize("transport", ["amqp", "redis"])
def test_an_inbox_gets_what_is_sent_to_it_and_a_copy_of_every_stop_broadcast(
    transport: str, broker_url: str
) -> None:
    """Two workers' inboxes, each with its queue of stop broadcasts: each worker gets a copy
    of the stopped runs broadcast, and only the inbox an event (or the list of stopped runs)
    is sent to gets it. (On Redis an inbox once bound to the fanout exchange itself was read
    through PUB/SUB alone: it got nothing sent to it.)"""
    # Given the inboxes of two workers, consumed
    sender = create_celery(Settings.from_env({"CELERIAC_BROKER_URL": broker_url}))
    names = [f"{INBOX_PREFIX}w{n}@e2e.{n}" for n in (1, 2)]
    got: dict[str, list[Any]] = {name: [] for name in names}
    connections = [sender.connection_for_read() for _ in names]
    consumers: list[Consumer] = []
    try:
        for name, connection in zip(names, connections, strict=True):

            def take(body: Any, message: Any, name: str = name) -> None:
                got[name].append(body)
                message.ack()

            queues = [inbox_entity(name), stops_entity(name)]
            consumers.append(Consumer(connection.channel(), queues, callbacks=[take]))
            consumers[-1].consume()
        # When an event is sent to the first, and stopped runs are broadcast
        event = DeliverEvent(task_id="t-1", seq=0, event="{}")
        send_to_inbox(sender, names[0], event)
        stops = StopRuns(runs=[["t-2", 1]], reason="cancelled")
        broadcast_stops(sender, stops)

        # Then the first gets both, the second the broadcast alone
        def drained() -> dict[str, list[Any]]:
            for connection in connections:
                with contextlib.suppress(TimeoutError, socket.timeout):
                    connection.drain_events(timeout=0.1)
            return got

        poll(drained, lambda got: sum(map(len, got.values())) >= 3, 10.0, "three deliveries")
        assert got == {names[0]: [event.encode(), stops.encode()], names[1]: [stops.encode()]}
    finally:
        # (consumers first: py-amqp leaves its socket open if RabbitMQ cancels one as it closes)
        for consumer in consumers:
            consumer.cancel()
        for name, connection in zip(names, connections, strict=True):
            for queue in (inbox_entity(name), stops_entity(name)):
                with contextlib.suppress(Exception):
                    queue(connection.channel()).delete()
            connection.close()
        sender.close()
