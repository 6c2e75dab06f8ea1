"""Idempotency keys: a client's key names the task its request stored, for a while.

A request of ``tasks/create`` or ``tasks/run`` may carry an ``Idempotency-Key``. The key is
claimed in the transaction that stores the task, after the task's row: of two requests with
one key, however close together and on whatever API servers, one claims it and the other
waits for that one's transaction (the key is the row's primary key), then rolls back its
own task and reads the key. A key older than its lifetime is free again: the claim takes its
row over, in the same single statement.

A request is known by its hash (see ``app.control.tasks``): the same one again is a replay
of the task the key names; another one is refused (409), and nothing changes.

The functions that take a connection run inside the lifecycle's transactions: only the
lifecycle (``app.control.lifecycle.operations``) writes keys.
"""

from __future__ import annotations

import datetime as dt
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


def claim_statement(dialect: str) -> Insert:
    """The INSERT of a key (``deployment_id``, ``key``, ``request_hash``, ``task_id``,
    ``created_at``) that takes over the row of an expired one (older than ``cutoff``);
    it returns the task id when the key is the caller's now, and no row when it is taken."""
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(keys)
    return insert.on_conflict_do_update(
        index_elements=[keys.c.deployment_id, keys.c.key],
        set_={
            "request_hash": insert.excluded.request_hash,
            "task_id": insert.excluded.task_id,
            "created_at": insert.excluded.created_at,
        },
        where=keys.c.created_at < bindparam("cutoff"),
    ).returning(keys.c.task_id)


def claim(
    conn: Connection,
    statement: Insert,
    deployment_id: int,
    key: RequestKey,
    task_id: str,
    now: dt.datetime,
    cutoff: dt.datetime,
) -> bool:
    """Claim ``key`` for ``task_id`` (stored in this transaction); False if it is taken."""
    params: dict[str, Any] = {
        "deployment_id": deployment_id,
        "key": key.key,
        "request_hash": key.request_hash,
        "task_id": task_id,
        "created_at": now,
        "cutoff": cutoff,
    }
    return conn.execute(statement, params).first() is not None


def earlier(
    conn: Connection, deployment_id: int, key: RequestKey, cutoff: dt.datetime, lifetime: float
) -> Replay | None:
    """The task the live ``key`` names, if it was claimed by the same request; None if
    nobody holds the key; :class:`Conflict` if another request does."""
    found = conn.execute(
        _LIVE, {"deployment_id": deployment_id, "key": key.key, "cutoff": cutoff}
    ).first()
    if found is None:
        return None
    if found.request_hash != key.request_hash:
        raise Conflict(
            f"Idempotency-Key {key.key!r} was used with a different request in the last "
            f"{lifetime:g} s; nothing was stored. Send a new request under a new key",
            errors={
                "Idempotency-Key": [
                    "used with a different request (route, input, service_id, task_id or "
                    "session_id)"
                ]
            },
        )
    return Replay(found.task_id)


def purge(conn: Connection, cutoff: dt.datetime) -> int:
    """Delete the keys of every deployment that expired before ``cutoff``; how many."""
    return conn.execute(_PURGE, {"cutoff": cutoff}).rowcount
