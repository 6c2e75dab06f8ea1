"""Reading a service queue of the memory broker, as a test that plays the worker does."""

from __future__ import annotations

from typing import Any

from kombu import Connection

from workers.celery_app import CeleriacCelery
from workers.protocol import service_queue


def drain(celery: CeleriacCelery, deployment: str, service: str) -> list[Any]:
    """Take every message off the service's queue, acknowledged; their payloads, in order
    (Celery's protocol 2: ``(args, kwargs, embed)``)."""
    taken = []
    with Connection(celery.conf.broker_url) as conn:
        queue = conn.SimpleQueue(service_queue(deployment, service))
        while True:
            try:
                message = queue.get(block=False)
            except queue.Empty:
                break
            taken.append(message.payload)
            message.ack()
        queue.close()
    return taken
