"""End to end: a service worker's inbox lives as long as the worker, and no sender revives it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import amqp.exceptions
import pytest
import redis
from kombu import Connection

from config.settings import Settings
from tests.e2e.conftest import Platform, node
from workers.celery_app import create_celery, send_to_inbox
from workers.inbox import INBOX_EXPIRES, inbox_entity
from workers.protocol import DeliverEvent


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


def _keys_naming(url: str, name: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return [key for key in client.keys("*") if name.encode() in key]
    finally:
        client.close()


@pytest.mark.e2e
@pytest.mark.parametrize("transport", ["amqp", "redis"])
def test_a_stopped_worker_leaves_no_inbox_behind(
    transport: str, broker_url: str, make_platform: Callable[[str], Platform], sleepy: Path
) -> None:
    """Each worker process has an inbox of its own, which it deletes when it stops."""
    # Given a worker that ran a task (and so reported its inbox)
    platform = make_platform(broker_url)
    inbox, pid = _inbox_of_a_task(platform, sleepy)
    assert inbox == f"celeriac.inbox.{node('w1')}.{pid}"
    if transport == "amqp":
        assert _amqp_queue_exists(broker_url, inbox)

    # When the worker stops (a warm shutdown)
    [worker] = [p for p in platform.processes.started if p.pid == pid]
    assert worker.terminate() == 0

    # Then nothing of its inbox is left on the broker
    if transport == "amqp":
        assert not _amqp_queue_exists(broker_url, inbox)
    else:
        assert _keys_naming(broker_url, inbox) == []


@pytest.mark.e2e
def test_a_rabbitmq_inbox_expires_and_events_for_a_gone_worker_are_dropped(
    amqp_url: str, make_platform: Callable[[str], Platform], sleepy: Path
) -> None:
    """A crashed worker's inbox expires on RabbitMQ; a sender never declares an inbox."""
    # Given a worker that ran a task
    platform = make_platform(amqp_url)
    inbox, pid = _inbox_of_a_task(platform, sleepy)

    # Then its inbox carries an expiry: declared without one, RabbitMQ refuses it as different
    with Connection(amqp_url, connect_timeout=5) as conn:
        with pytest.raises(amqp.exceptions.PreconditionFailed):
            conn.channel().queue_declare(inbox, durable=True, auto_delete=False)
        assert inbox_entity(inbox).expires == INBOX_EXPIRES
        inbox_entity(inbox)(conn.channel()).declare()  # the same arguments are accepted

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
