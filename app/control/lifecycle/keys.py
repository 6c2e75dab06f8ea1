"""Idempotency keys: a client's key names the task its request stored, for a while.

A request of ``tasks/create`` or ``tasks/run`` may carry an ``Idempotency-Key``. The key is
claimed in the transaction that stores the task, after the task's row: of two requests with
one key, however close together and on whatever API servers, one claims it and the other
waits for that one's transaction (the key is the row's primary key), then rolls back its
own task and reads the key. A key older than its lifetime is free again: the claim takes its
row over, in the same single statement.

A request is known by its hash (see ``app.control.tasks``): the same one again is a replay
of the task the key names; another one is refused (409), and nothing changes.

The methods that take a connection run on the lifecycle's connections: only the
lifecycle (``app.control.lifecycle.operations``) writes keys.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Insert, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite

from app.errors import Conflict
from app.models import IdempotencyKey
from app.models.base import table_of

keys = table_of(IdempotencyKey)

#: The key's row as its request left it, if it still lives.
_LIVE = select(keys.c.request_hash, keys.c.task_id).where(
    keys.c.deployment_id == bindparam("deployment_id"),
    keys.c.key == bindparam("key"),
    keys.c.created_at >= bindparam("cutoff"),
)
_PURGE = keys.delete().where(keys.c.created_at < bindparam("cutoff"))
#: Seconds between two purges of expired keys by one process, at most.
PURGE_EVERY = 60.0


@dataclass(frozen=True)
class RequestKey:
    """A request's ``Idempotency-Key``, and the hash of what the request asks."""

    key: str
    request_hash: str


@dataclass(frozen=True)
class Replay:
    """The key names a task that an earlier request, the same as this one, stored: nothing
    was stored now."""

    task_id: str


class Keys:
    """The key statements of one database, and how long a key lives (``lifetime`` s)."""

    def __init__(self, dialect: str, lifetime: float) -> None:
        self.lifetime = lifetime
        insert = (postgresql if dialect == "postgresql" else sqlite).insert(keys)
        # INSERT the key, or take over the row of an expired one; RETURNING the task id when
        # the key is the caller's now, no row when it is taken.
        self._claim: Insert = insert.on_conflict_do_update(
            index_elements=[keys.c.deployment_id, keys.c.key],
            set_={
                "request_hash": insert.excluded.request_hash,
                "task_id": insert.excluded.task_id,
                "created_at": insert.excluded.created_at,
            },
            where=keys.c.created_at < bindparam("cutoff"),
        ).returning(keys.c.task_id)
        #: When this process may purge expired keys next (``time.monotonic``).
        self._next_purge = 0.0

    def cutoff(self, now: dt.datetime) -> dt.datetime:
        """Keys claimed before this, ``now``, have expired."""
        return now - dt.timedelta(seconds=self.lifetime)

    def claim(
        self,
        conn: Connection,
        deployment_id: int,
        key: RequestKey,
        task_id: str,
        now: dt.datetime,
    ) -> bool:
        """Claim ``key`` for ``task_id`` (stored in this transaction); False if it is taken."""
        params: dict[str, Any] = {
            "deployment_id": deployment_id,
            "key": key.key,
            "request_hash": key.request_hash,
            "task_id": task_id,
            "created_at": now,
            "cutoff": self.cutoff(now),
        }
        return conn.execute(self._claim, params).first() is not None

    def earlier(
        self, conn: Connection, deployment_id: int, key: RequestKey, now: dt.datetime
    ) -> Replay | None:
        """The task the live ``key`` names, if it was claimed by the same request; None if
        nobody holds the key; :class:`Conflict` if another request does."""
        params = {"deployment_id": deployment_id, "key": key.key, "cutoff": self.cutoff(now)}
        found = conn.execute(_LIVE, params).first()
        if found is None:
            return None
        if found.request_hash != key.request_hash:
            raise Conflict(
                f"Idempotency-Key {key.key!r} was used with a different request in the last "
                f"{self.lifetime:g} s; nothing was stored. Send a new request under a new key",
                errors={
                    "Idempotency-Key": [
                        "used with a different request (route, input, service_id, task_id or "
                        "session_id)"
                    ]
                },
            )
        return Replay(found.task_id)

    def purge_due(self) -> bool:
        """Whether to purge expired keys now: once a minute at most (or once a lifetime, if
        shorter). A key's own expired row is taken over when it is used again, so purging
        only keeps the table small; the requests that carry a key pay for it."""
        moment = time.monotonic()
        if moment < self._next_purge:
            return False
        self._next_purge = moment + min(PURGE_EVERY, self.lifetime)
        return True

    def purge(self, conn: Connection, now: dt.datetime) -> int:
        """Delete the expired keys of every deployment; how many."""
        return conn.execute(_PURGE, {"cutoff": self.cutoff(now)}).rowcount
