"""Flower's Broker page on the brokers Flower cannot read by itself: SQS, and RabbitMQ without
its management plugin.

Flower (``celery -A workers.entry flower``) shows queue lengths on its Broker page and at
``/api/queues/length`` through one factory, ``flower.utils.broker.Broker``, that picks a reader
by the broker URL's scheme. It reads Redis's lists itself; on RabbitMQ it asks the management
plugin's HTTP API (at ``--broker_api``, else port 15672 of the broker's host), which a fresh
RabbitMQ does not run: the page then lists nothing and Flower logs an error on every view. On
SQS it answers 404 "'sqs' broker is not supported".

:func:`teach_flower` wraps that factory, in Flower's process only (:func:`flower_is_running`),
so that it gives a :class:`QueueLengths` on SQS, and on RabbitMQ when Flower was given no
``--broker_api``; every other case is Flower's. A :class:`QueueLengths` reads through the Celery
app's own connection, so with Celeriac's URL, credentials, region and transport options:

- RabbitMQ: a passive ``queue.declare`` of each queue Flower names answers its ready messages
  and its consumers (only the management plugin counts the unacknowledged ones); a queue the
  broker does not have is left out.
- SQS: ``ApproximateNumberOfMessages`` (ready) and ``ApproximateNumberOfMessagesNotVisible``
  (taken by a worker, not yet deleted: unacknowledged) of the queues Flower names and of every
  Celeriac queue, under their SQS names (Kombu's: the queue-name prefix, dots made dashes).
  Flower knows no worker there (SQS has no broadcast, so no remote control), and would name
  only ``control_plane``.

``messages`` is the ready count, as in Flower's Redis reader (RabbitMQ's plugin adds the
unacknowledged ones). What this relies on in Flower 2: the factory's name and the keyword
``http_api`` it passes, and that a reader is an object whose ``async queues(names)`` returns
one dict per queue with the keys its page shows (``name``, ``messages``, ``messages_ready``,
``messages_unacknowledged``, ``consumers``). A Flower without that factory is left as it is.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Iterable
from typing import Any

import click

from workers.protocol import SERVICE_QUEUE_PREFIX

#: Seconds a page view waits to connect to the broker (Flower's own readers wait one or two).
CONNECT_TIMEOUT = 2.0
#: The SQS queue attributes read: messages ready, and messages a consumer holds.
SQS_READY = "ApproximateNumberOfMessages"
SQS_TAKEN = "ApproximateNumberOfMessagesNotVisible"


def flower_is_running() -> bool:
    """Whether this process is Flower's: Celery's command line (click) is loading the app for
    its ``flower`` command. Every ``celery`` command imports Flower's modules when Flower is
    installed, so that alone tells nothing."""
    context = click.get_current_context(silent=True)
    return context is not None and context.invoked_subcommand == "flower"


def teach_flower(celery: Any) -> None:
    """Make Flower's queue-length factory give a :class:`QueueLengths` of ``celery`` on SQS,
    and on RabbitMQ without ``--broker_api`` (see above); once per process."""
    try:
        # Flower is an optional extra: imported here, in the process that runs it.
        flower_broker = importlib.import_module("flower.utils.broker")
    except ImportError:
        return
    factory = getattr(flower_broker, "Broker", None)
    if factory is None or getattr(factory, "celeriac_queue_lengths", False):
        return
    flowers = factory.__new__
    kind = celery.settings.transport

    def new(cls: type, broker_url: str, *args: Any, **kwargs: Any) -> Any:
        if kind == "sqs" or (kind == "amqp" and not kwargs.get("http_api")):
            return QueueLengths(celery)
        return flowers(cls, broker_url, *args, **kwargs)

    factory.__new__ = staticmethod(new)
    factory.celeriac_queue_lengths = True


class QueueLengths:
    """Queue lengths for Flower's Broker page, read through the Celery app's connection."""

    def __init__(self, celery: Any) -> None:
        self._celery = celery

    async def queues(self, names: Iterable[str]) -> list[dict[str, Any]]:
        """Flower's call: one dict per queue, read in a thread (the reads block) so that
        Flower's event loop goes on meanwhile."""
        wanted = list(names)
        return await asyncio.get_running_loop().run_in_executor(None, self.read, wanted)

    def read(self, names: list[str]) -> list[dict[str, Any]]:
        """The lengths of these queues (on SQS, and of Celeriac's), on a new connection."""
        with self._celery.connection_for_read(connect_timeout=CONNECT_TIMEOUT) as conn:
            conn.connect()
            if self._celery.settings.transport == "sqs":
                return sqs_lengths(conn, names)
            return amqp_lengths(conn, names)


def amqp_lengths(conn: Any, names: list[str]) -> list[dict[str, Any]]:
    """Ready messages and consumers of each queue, by a passive declare (which creates
    nothing); queues RabbitMQ does not have are left out."""
    found = []
    channel = conn.channel()
    for name in names:
        try:
            _, ready, consumers = channel.queue_declare(queue=name, passive=True)
        except conn.channel_errors:
            # RabbitMQ closes the channel of a declare naming no queue (404): open another.
            channel = conn.channel()
            continue
        found.append(
            {"name": name, "messages": ready, "messages_ready": ready, "consumers": consumers}
        )
    return found


def sqs_lengths(conn: Any, names: list[str]) -> list[dict[str, Any]]:
    """Ready and taken messages of the queues named and of Celeriac's queues, by SQS name;
    queues SQS does not have are left out (none is created)."""
    channel = conn.channel()
    client = channel.sqs()
    missing = client.exceptions.QueueDoesNotExist
    urls: dict[str, str] = {}
    for name in names:
        sqs_name = channel.canonical_queue_name(name)
        try:
            urls[sqs_name] = client.get_queue_url(QueueName=sqs_name)["QueueUrl"]
        except missing:
            continue
    ours = channel.canonical_queue_name(SERVICE_QUEUE_PREFIX)
    for page in client.get_paginator("list_queues").paginate(QueueNamePrefix=ours):
        for url in page.get("QueueUrls", []):
            urls.setdefault(url.rsplit("/", 1)[-1], url)
    found = []
    for sqs_name, url in sorted(urls.items()):
        try:
            answer = client.get_queue_attributes(
                QueueUrl=url, AttributeNames=[SQS_READY, SQS_TAKEN]
            )
        except missing:
            continue  # deleted since it was listed (a worker's inbox, as the worker stopped)
        ready = int(answer["Attributes"][SQS_READY])
        taken = int(answer["Attributes"][SQS_TAKEN])
        found.append(
            {
                "name": sqs_name,
                "messages": ready,
                "messages_ready": ready,
                "messages_unacknowledged": taken,
            }
        )
    return found
