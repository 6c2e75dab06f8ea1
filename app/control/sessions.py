"""Sessions: create, read and delete the task sequences of a deployment."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from app.control.deployments import find as find_deployment
from app.db import Database
from app.errors import NotFound
from app.models import Session, Task
from app.models.base import utcnow


class Sessions:
    """The sessions of deployments."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, deployment: str) -> Session:
        """A new, empty session."""
        with self._db.begin() as db:
            row = Session(deployment_id=find_deployment(db, deployment).id, state={})
            db.add(row)
        return row

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
            return find(db, find_deployment(db, deployment).id, session_id)

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
        with self._db.begin() as db:
            find(db, find_deployment(db, deployment).id, session_id).deleted_at = utcnow()


def find(db: DbSession, deployment_id: int, session_id: str) -> Session:
    """A live session of the deployment, or :class:`NotFound`."""
    row = db.get(Session, session_id)
    if row is None or row.deployment_id != deployment_id or row.deleted_at is not None:
        raise NotFound(f"session {session_id!r} not found")
    return row
