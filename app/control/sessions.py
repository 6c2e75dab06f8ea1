"""Sessions: create, read and delete the task sequences of a deployment."""

from __future__ import annotations

from sqlalchemy import select

from app.control.deployments import find as find_deployment
from app.control.lifecycle import Lifecycle
from app.control.lifecycle.turns import find_session
from app.db import Database
from app.models import Session, Task


class Sessions:
    """The sessions of deployments."""

    def __init__(self, db: Database, lifecycle: Lifecycle) -> None:
        self._db = db
        self._lifecycle = lifecycle

    def create(self, deployment: str) -> Session:
        """A new, empty session."""
        return self._lifecycle.open_session(deployment)

    def all(self, deployment: str) -> list[Session]:
        """The live sessions of a deployment, oldest first."""
        with self._db.read() as db:
            dep = find_deployment(db, deployment)
            query = (
                select(Session)
                .where(Session.deployment_id == dep.id, Session.deleted_at.is_(None))
                .order_by(Session.created_at, Session.id)
            )
            return list(db.scalars(query))

    def get(self, deployment: str, session_id: str) -> Session:
        """One live session, or :class:`NotFound`."""
        with self._db.read() as db:
            return find_session(db, find_deployment(db, deployment).id, session_id)

    def task_ids(self, session_id: str) -> list[str]:
        """The ids of a session's tasks, in submission order."""
        with self._db.read() as db:
            query = (
                select(Task.id)
                .where(Task.session_id == session_id)
                .order_by(Task.created_at, Task.id)
            )
            return list(db.scalars(query))

    def delete(self, deployment: str, session_id: str) -> None:
        """Close a session; its tasks and their history stay readable."""
        self._lifecycle.close_session(deployment, session_id)
