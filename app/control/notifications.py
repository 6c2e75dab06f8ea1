"""Wake waiters across processes: PostgreSQL NOTIFYs, API servers LISTEN.

In the distributed mode the recorder runs in the control-plane consumer, not in the API
server whose ``tasks/run`` or event stream waits. Without a signal those waiters poll the
database; with PostgreSQL, triggers (migrations 0004 and 0006) NOTIFY on one channel when
a task's status changes or one of its events is stored, as the change commits, and each API
server keeps one connection that ``LISTEN``s and wakes its local waiters. Polling stays as
the safety net.

A payload is a JSON object: the task's ``id``, and for a status change its ``status`` with,
unless too large, its ``result`` and ``error``. A final outcome is passed on to the waiters,
which then need not read it.
"""

from __future__ import annotations

import json
import logging
import threading

from sqlalchemy.engine import make_url

from app.control.waiter import Outcome, TaskWaiter
from app.models import TaskStatus

log = logging.getLogger(__name__)

#: The channel the triggers of migration 0004 notify on.
CHANNEL = "celeriac_tasks"


class Listener:
    """A daemon thread that turns PostgreSQL notifications into local waiter wake-ups."""

    def __init__(self, database_url: str, waiter: TaskWaiter) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._waiter = waiter
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="celeriac-listen", daemon=True)

    def start(self) -> None:
        """Start listening."""
        self._thread.start()

    def stop(self) -> None:
        """Stop listening (the thread ends at its next timeout)."""
        self._stop.set()

    def _run(self) -> None:
        # psycopg is the ``postgres`` extra; it is there whenever the database is PostgreSQL.
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._waiter.set_relayed(True)
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._relay(note.payload)
            except psycopg.Error:
                log.warning("lost the database notification channel; retrying", exc_info=True)
                self._waiter.set_relayed(False)
                self._stop.wait(1.0)
        self._waiter.set_relayed(False)

    def _relay(self, payload: str) -> None:
        try:
            task_id, outcome = heard(payload)
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a notification that is not a task's: %.200r", payload)
            return
        self._waiter.notify(task_id, outcome)


def heard(payload: str) -> tuple[str, Outcome | None]:
    """The task a notification is about, and its outcome if it carries how the task ended."""
    change = json.loads(payload)
    task_id = str(change["id"])
    if "result" not in change or not TaskStatus(change["status"]).terminal:
        return task_id, None
    return task_id, Outcome(change["status"], change["result"], change["error"])
