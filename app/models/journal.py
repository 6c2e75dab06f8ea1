"""Durable runs' journals: each task's workflow ticks, its latest checkpoint and its steps.

Only tasks of durable services have rows here (see ``workers.durable``). Workers send the
journal over the broker; the control plane writes it (``app.control.journal``), once per
number whatever the redeliveries.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, utcnow


class JournalTick(Base):
    """One tick of a durable task's workflow (llama-index-workflows' JSON of it), by run and
    number: a task's retry (a new run) starts over."""

    __tablename__ = "journal_ticks"

    task_id: Mapped[str] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    run: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    data: Mapped[str] = mapped_column(Text)
    #: The number of the event sent in that this tick applied, if it applied one.
    input_seq: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Checkpoint(Base):
    """What a durable task resumes from besides its ticks: a snapshot of the run that stands
    for the ticks before ``journal_seq`` (the journal is compacted), ``ctx.store`` as last
    sent, and the number of the last event sent in that the journal includes."""

    __tablename__ = "checkpoints"

    task_id: Mapped[str] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    #: The run it is of: a checkpoint of an earlier run is not resumed from.
    run: Mapped[int] = mapped_column(Integer)
    #: The latest attempt of the run to resume from it: only its messages are written.
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    journal_seq: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    #: How many ticks the run had journaled when ``state`` was sent.
    state_through: Mapped[int] = mapped_column(Integer, default=0)
    #: The last event sent in that the snapshot includes (the ticks say which others the
    #: journal includes).
    inputs: Mapped[int] = mapped_column(Integer, default=-1)
    #: The run's waits for an event that time out (``JournalWritten.waiters``).
    waiters: Mapped[list[dict[str, Any]] | None] = mapped_column(
        JSON(none_as_null=True), nullable=True
    )
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class TaskStep(Base):
    """One execution of a durable task's step that ended, by the number of its tick."""

    __tablename__ = "task_steps"

    task_id: Mapped[str] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    run: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    step: Mapped[str] = mapped_column(String(200))
    #: The event the step took (its class name), and a digest of it: the executions of one
    #: step on one event are its attempts, numbered as they are listed.
    input: Mapped[str] = mapped_column(String(500))
    input_key: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(300))
