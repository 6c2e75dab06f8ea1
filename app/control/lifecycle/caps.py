"""A service's concurrency cap: how many of its tasks run at once, and which one goes next.

A service's ``celeriac`` block may cap its tasks: ``concurrency: {limit, key, per-key}``. A
task of a capped service gets its group when it is queued (``tasks.cap_group``, see
:func:`group_of`). It holds a slot from the moment its first step is sent (``dispatched_at``)
until it ends or waits for a retry: while it is sent and its status is one the transition
table lets move to ``running``. A task that finds no free slot is stored queued and not
sent (``dispatched_at`` empty), as a task waiting for its session's turn is: it holds no
worker. When a slot comes free, the oldest waiting tasks that fit are sent, in the same
transaction.

No slot is ever counted apart: each decision counts the tasks table, so that no path can
lose a slot or give one twice. Decisions on a service take turns on its ``services`` row
(``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite has one writer at a time), so that two API
servers never both give away its last slot. The cap is read from the deployment's stored spec
as each decision is made: a reload that changes it applies from the next one.

Lock order, which keeps the transactions that meet here free of deadlocks: sessions' rows
(``turns``) before services' rows, services' rows in id order, and no wait for a task's row
while a service's row is held: waiting tasks are taken with ``SKIP LOCKED``. A task skipped
so (a client was sending it an event) waits for the next decision, or for the control
plane's sweep (:data:`WAITING_SERVICES`, ``Lifecycle.admit_waiting``), which also sends,
within a second, the tasks that a cap raised by a reload lets start.

The functions that take a connection run inside the lifecycle's transactions: only the
lifecycle (``app.control.lifecycle.operations``) changes tasks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, Integer, Row, bindparam, func, select, tuple_

from app.control.lifecycle.guards import status_in
from app.control.lifecycle.statements import with_first_step
from app.models import Deployment, Service, Session, Task, TaskStatus
from app.models.base import table_of, utcnow
from config.deployment.controls import ConcurrencyLimit

_tasks = table_of(Task)
_services = table_of(Service)
_sessions = table_of(Session)
_deployments = table_of(Deployment)

#: A key's value whose JSON is longer than this is stored as its SHA-256 (the column's width).
GROUP_WIDTH = 64
#: The most tasks one decision sends when the service has no cap any more (a reload removed
#: it): the sweep sends the rest, a batch a second.
BATCH = 200
#: Specs of deployment versions kept parsed in this process, at most.
_KEPT_SPECS = 256

#: A deployment's version: its id, its creation (SQLite may give the id of a deleted
#: deployment to a new one, at version 1 again) and its version number.
_Version = tuple[int, Any, int]
_VERSION = (_deployments.c.created_at, _deployments.c.version)

#: A (deployment id, service name) pair: what a cap applies to.
ServiceKey = tuple[int, str]

_OF_SERVICE = (
    _tasks.c.deployment_id == bindparam("deployment_id"),
    _tasks.c.service == bindparam("service"),
)
#: A task that holds a slot: sent, not ended, and not waiting for a retry. The three first
#: conditions are those of the partial index ``ix_tasks_cap_held``.
_HOLDS = (
    _tasks.c.cap_group.is_not(None),
    _tasks.c.dispatched_at.is_not(None),
    _tasks.c.finished_at.is_(None),
    status_in(TaskStatus.RUNNING.sources()),
)
#: A task that waits for a slot: queued and never sent (the three first conditions are those
#: of the partial index ``ix_tasks_cap_waiting``)...
_WAITS = (
    _tasks.c.cap_group.is_not(None),
    _tasks.c.dispatched_at.is_(None),
    _tasks.c.finished_at.is_(None),
    _tasks.c.status == TaskStatus.QUEUED.value,
)
#: ... whose session's turn, if it has a session, is its own (a join on the session's key,
#: row by row: an ``EXISTS`` here is planned as a scan of every session) ...
_OWN_TURN = _tasks.c.session_id.is_(None) | (_sessions.c.active_task_id == _tasks.c.id)
_TURNS = _sessions.c.id == _tasks.c.session_id
#: ... and fits: its group is not one of the ``full`` ones.
_FITS = _tasks.c.cap_group.not_in(bindparam("full", expanding=True))

#: The services' rows, taken in id order, with their deployments' versions.
_LOCK = (
    select(_services.c.deployment_id, _services.c.name, *_VERSION)
    .join(_deployments, _deployments.c.id == _services.c.deployment_id)
    .where(
        tuple_(_services.c.deployment_id, _services.c.name).in_(
            bindparam("services", expanding=True)
        )
    )
    .order_by(_services.c.id)
    .with_for_update(of=_services)
)
_SPEC = select(*_VERSION, _deployments.c.spec).where(
    _deployments.c.id == bindparam("deployment_id")
)
#: How many tasks of the service hold a slot, by group.
_HELD = (
    select(_tasks.c.cap_group, func.count())
    .where(*_OF_SERVICE, *_HOLDS)
    .group_by(_tasks.c.cap_group)
)
#: The service's oldest waiting tasks that fit (``n`` at most), locked unless another
#: transaction holds them, with what their first steps need.
_WAITING = (
    with_first_step()
    .outerjoin(_sessions, _TURNS)
    .where(*_OF_SERVICE, *_WAITS, _OWN_TURN, _FITS)
    .order_by(_tasks.c.created_at, _tasks.c.id)
    .limit(bindparam("n", type_=Integer))
    .with_for_update(of=_tasks, skip_locked=True, key_share=True)
)
#: A waiting task of the service that fits, if any.
_ONE_WAITING = (
    select(_tasks.c.id)
    .outerjoin(_sessions, _TURNS)
    .where(*_OF_SERVICE, *_WAITS, _OWN_TURN, _FITS)
    .limit(1)
)
_SEND = (
    _tasks.update()
    .where(_tasks.c.id.in_(bindparam("ids", expanding=True)), _tasks.c.dispatched_at.is_(None))
    .values(dispatched_at=bindparam("now"))
)
#: The services that have tasks waiting for a slot.
WAITING_SERVICES = select(_tasks.c.deployment_id, _tasks.c.service).where(*_WAITS).distinct()


def group_of(concurrency: Mapping[str, Any] | None, run_input: Mapping[str, Any]) -> str | None:
    """The group of a task with ``run_input`` under its service's ``concurrency`` mapping
    (the YAML's spelling): None without a cap, ``""`` for a cap without a key, else the JSON
    of the input's top-level ``key`` field (``null`` when it is missing), or ``sha256:`` and
    that JSON's hex digest when it is longer than :data:`GROUP_WIDTH`."""
    if not concurrency:
        return None
    key = concurrency.get("key")
    if key is None:
        return ""
    value = json.dumps(run_input.get(key), sort_keys=True, separators=(",", ":"))
    if len(value) <= GROUP_WIDTH:
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def cap_of(spec: Mapping[str, Any], service: str) -> ConcurrencyLimit | None:
    """The cap of ``service`` in a deployment's stored spec, if it has one."""
    entry = spec.get("services", {}).get(service) or {}
    concurrency = (entry.get("celeriac") or {}).get("concurrency")
    return None if concurrency is None else ConcurrencyLimit.from_dict(concurrency)


class Caps:
    """Admits tasks of capped services to their slots; keeps deployments' caps as parsed."""

    def __init__(self) -> None:
        #: A deployment's version -> service -> its cap (None: none).
        self._specs: dict[_Version, dict[str, ConcurrencyLimit | None]] = {}

    def admits(self, conn: Connection, deployment_id: int, service: str, group: str) -> bool:
        """Whether a task of ``group`` that may run now (a new one, or one retried) may be sent
        at once; if not, the caller stores it waiting.

        It may if a slot is free for its group and no task that fits waits before it; a task
        that fits and waits while a slot is free is one the sweep sends within a second (a
        cap raised since it was queued), and this one waits behind it.
        """
        cap = self.lock(conn, [(deployment_id, service)]).get((deployment_id, service))
        if cap is None:
            return True
        held = self._held(conn, deployment_id, service)
        if sum(held.values()) >= cap.limit:
            return False
        if cap.per_key is not None and held.get(group, 0) >= cap.per_key:
            return False
        params = {
            "deployment_id": deployment_id,
            "service": service,
            "full": _full(held, cap),
        }
        return conn.execute(_ONE_WAITING, params).first() is None

    def hand_off(self, conn: Connection, services: Iterable[ServiceKey]) -> list[Row[Any]]:
        """Give the free slots of ``services`` to their oldest waiting tasks that fit, in
        order of arrival; returns the rows of the tasks sent (marked so), for the caller to
        send their first steps once the transaction commits."""
        wanted = sorted(set(services))
        if not wanted:
            return []
        caps = self.lock(conn, wanted)
        sent: list[Row[Any]] = []
        for deployment_id, service in wanted:
            sent += self._fill(conn, deployment_id, service, caps.get((deployment_id, service)))
        return sent

    def lock(
        self, conn: Connection, services: Iterable[ServiceKey]
    ) -> dict[ServiceKey, ConcurrencyLimit | None]:
        """Take the rows of ``services`` (in id order) until the transaction ends; returns the
        cap of each that has one. A service a reload removed has no row, and no cap."""
        wanted = sorted(set(services))
        if not wanted:
            return {}
        caps: dict[ServiceKey, ConcurrencyLimit | None] = {}
        for row in conn.execute(_LOCK, {"services": wanted}):
            version = (row.deployment_id, row.created_at, row.version)
            caps[row.deployment_id, row.name] = self._cap(conn, version, row.name)
        return caps

    def _cap(self, conn: Connection, version: _Version, service: str) -> ConcurrencyLimit | None:
        caps = self._specs.get(version)
        if caps is None:
            deployment_id = version[0]
            found = conn.execute(_SPEC, {"deployment_id": deployment_id}).first()
            if found is None:
                return None
            services = found.spec.get("services", {})
            caps = {name: cap_of(found.spec, name) for name in services}
            if len(self._specs) >= _KEPT_SPECS:
                self._specs.clear()
            # Under the version read with the spec: a reload may have come in between.
            self._specs[deployment_id, found.created_at, found.version] = caps
        return caps.get(service)

    def _held(self, conn: Connection, deployment_id: int, service: str) -> dict[str, int]:
        """How many tasks of the service hold a slot, by group."""
        params = {"deployment_id": deployment_id, "service": service}
        return {group: count for group, count in conn.execute(_HELD, params)}

    def _fill(
        self,
        conn: Connection,
        deployment_id: int,
        service: str,
        cap: ConcurrencyLimit | None,
    ) -> list[Row[Any]]:
        """Send the oldest waiting tasks of one service (locked) while slots are free."""
        held = self._held(conn, deployment_id, service)
        free = BATCH if cap is None else cap.limit - sum(held.values())
        per_key = None if cap is None else cap.per_key
        now = utcnow()
        sent: list[Row[Any]] = []
        while free > 0:
            params: dict[str, Any] = {
                "deployment_id": deployment_id,
                "service": service,
                "full": _full(held, cap),
                "n": free,
            }
            rows = conn.execute(_WAITING, params).all()
            taken: list[Row[Any]] = []
            for row in rows:
                count = held.get(row.cap_group, 0)
                if free == 0 or (per_key is not None and count >= per_key):
                    continue  # its group filled up in this batch: it waits
                held[row.cap_group] = count + 1
                free -= 1
                taken.append(row)
            if taken:
                conn.execute(_SEND, {"ids": [row.id for row in taken], "now": now})
                sent += taken
            # The first row always fits: a batch with none taken, or short, was the last
            if not taken or len(rows) < int(params["n"]):
                break
        return sent


def _full(held: Mapping[str, int], cap: ConcurrencyLimit | None) -> list[str]:
    """The groups that hold as many slots as the cap's ``per-key`` allows."""
    if cap is None or cap.per_key is None:
        return []
    return sorted(group for group, count in held.items() if count >= cap.per_key)
