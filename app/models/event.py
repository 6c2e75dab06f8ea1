"""Events: what a task's workflow streamed out and what was sent into it, in order."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, utcnow


class EventDirection(str, enum.Enum):
    """Whether the workflow wrote the event or a client sent it in."""

    OUT = "out"
    IN = "in"


class Event(Base):
    """One event of a task; ``(task_id, direction, seq)`` is unique, so recording is idempotent."""

    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("task_id", "direction", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    direction: Mapped[EventDirection] = mapped_column(String(3), default=EventDirection.OUT)
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(200))
    qualified_name: Mapped[str] = mapped_column(String(500))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
