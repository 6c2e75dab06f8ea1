"""Sessions: sequences of tasks that share a workflow Context."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, new_id, utcnow


class Session(Base):
    """A session of one deployment; deleting it hides it but keeps its tasks' history."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    #: Values the session's workflows keep between tasks (serialized Context, as JSON).
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: The task that has the session's Context now; later tasks of the session wait for it.
    active_task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
