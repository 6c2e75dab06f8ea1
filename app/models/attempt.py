"""Attempts: one row per run of a task's step, as its worker reported it."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime


class AttemptOutcome(str, enum.Enum):
    """How a run ended (an attempt still running has none)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: Stopped because the task was cancelled.
    CANCELLED = "cancelled"
    #: Stopped at its time limit (or never begun: the task waited past its allowed wait).
    TIMED_OUT = "timed_out"
    #: The control plane stopped waiting for the run's end: a later run of the task began,
    #: or the run was queued again. A late end report from the run replaces it.
    LOST = "lost"
    #: A durable run let go while it waited for input: the answer begins the next attempt,
    #: which resumes from the journal.
    PARKED = "parked"


class TaskAttempt(Base):
    """One run of a task: which worker, when it began and ended, and how.

    A run is known by what its worker sends in both its start and end reports: the worker's
    name and the time the run began (``StepStarted.at`` is ``StepFinished.started_at``);
    ``attempt`` is the number the control plane gave it, 1 for the first run recorded.
    """

    __tablename__ = "task_attempts"
    __table_args__ = (UniqueConstraint("task_id", "worker", "started_at"),)

    task_id: Mapped[str] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    worker: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: An :class:`AttemptOutcome`; empty while the run goes on.
    outcome: Mapped[str | None] = mapped_column(String(20), nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
