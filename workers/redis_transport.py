"""Kombu's Redis transport, with one redis-py client per channel.

Kombu's Redis channel builds a new redis-py client, with its table of reply callbacks, for
every publish, receipt and acknowledgement: about a tenth of a millisecond of CPU each,
several times per task in every process. A redis-py client is safe to share between
threads, and its connections still come from the channel's pool, so this channel builds one.
Celery loads the class by name (``transports.REDIS_TRANSPORT``) only for ``redis://`` URLs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any

from kombu.transport import redis


class _RedisChannel(redis.Channel):
    """A Redis channel that reuses one client for its commands."""

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client or self._commands_client

    @cached_property
    def _commands_client(self) -> Any:
        return self._create_client()


class RedisTransport(redis.Transport):
    """Kombu's Redis transport with :class:`_RedisChannel`."""

    Channel = _RedisChannel
